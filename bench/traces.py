"""Trace-length report: tokens per category (p50/p95/max) of SFT completions and prompts.

    python bench/traces.py [--sft data/sft.jsonl] [--n 1200] [--vocab 1024] [--json out.json]

Without ``--sft`` it builds a small mix (like train_dev.csv when present). Tokens are counted with the tiny
tokenizer (``fastnemo.tiny.train_tokenizer``, a byte-level BPE trained on the texts themselves; a local BPE
when fastnemo is not importable). Nothing is downloaded, so the real Nemotron tokenizer is not run here:
the report adds an ESTIMATE for it from character classes (see ``nemotron_estimate``), as a low/high range
(digit runs merged by three vs one token per digit). Check it with the real tokenizer on the GPU machine.
The competition limits: max_tokens 7680 for the completion, max_model_len 8192 for prompt + completion.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from puzzles.analyze import group_of
from puzzles.files import read_jsonl

TRAIN_DEV = REPO.parent / "shared" / "data" / "train_dev.csv"
MAX_COMPLETION = 7680


def tokenizer(texts: list[str], vocab_size: int):
    """The lead's tiny tokenizer when available, else the same recipe with ``tokenizers`` directly."""
    try:
        from fastnemo.tiny import train_tokenizer

        tok = train_tokenizer(texts, vocab_size)
        return "fastnemo.tiny", lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
    except ImportError:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        return "local BPE", lambda s: len(tok.encode(s).ids)


_PIECES = re.compile(r"[A-Za-z]+|\d+|\s+|[^\sA-Za-z\d]")


def nemotron_estimate(text: str) -> tuple[float, float]:
    """(low, high) token estimate for a large (~131k) English-heavy BPE vocabulary such as Nemotron's:
    a letter word ~1.3 tokens (short words 1, rare glyph-like words more), a digit run ceil(len/3) tokens
    (low) or one per digit (high), each symbol 1 token, whitespace mostly merged into the next token
    (newlines counted as 1)."""
    low = high = 0.0
    for piece in _PIECES.findall(text):
        if piece[0].isalpha():
            t = 1.0 if len(piece) <= 4 else 1.3 + len(piece) / 12
            low, high = low + t, high + t
        elif piece[0].isdigit():
            low, high = low + math.ceil(len(piece) / 3), high + len(piece)
        elif piece.isspace():
            n = piece.count("\n")
            low, high = low + n, high + n
        else:
            low, high = low + 1, high + 1
    return low, high


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


def _sft_rows(args) -> list[dict]:
    if args.sft:
        return read_jsonl(args.sft, strict=True)
    from puzzles.mix import MixConfig, build_mix

    out = Path(tempfile.mkdtemp()) / "mix.jsonl"
    like = str(TRAIN_DEV) if TRAIN_DEV.exists() else None
    print(f"building a {args.n}-row mix{' like ' + like if like else ''} ...", file=sys.stderr)
    build_mix(MixConfig(n=args.n, out=str(out), like=like, workers=2, progress=sys.stderr.isatty()))
    return read_jsonl(out, strict=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", type=Path, default=None, help="SFT JSONL to measure (default: build a small mix)")
    ap.add_argument("--n", type=int, default=1200, help="rows of the mix built without --sft")
    ap.add_argument("--vocab", type=int, default=1024, help="tiny tokenizer vocabulary size")
    ap.add_argument("--sample", type=int, default=3000, help="measure a random sample of this many rows")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from puzzles import categories

    rows = _sft_rows(args)
    if len(rows) > args.sample:
        rows = random.Random(0).sample(rows, args.sample)
    if not rows:
        print("no rows to measure")
        return 1
    kind, count = tokenizer([r["prompt"] for r in rows] + [r["completion"] for r in rows], args.vocab)
    by = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        g = group_of(categories.parse(r["prompt"])) if r["category"] == "equations" else r["category"]
        c = r["completion"]
        by[g]["completion_tokens"].append(count(c))
        by[g]["prompt_tokens"].append(count(r["prompt"]))
        by[g]["completion_chars"].append(len(c))
        lo, hi = nemotron_estimate(c)
        by[g]["nemotron_low"].append(lo)
        by[g]["nemotron_high"].append(hi)

    report = {"tokenizer": f"{kind}, vocab {args.vocab}", "rows": len(rows), "groups": {}}
    t = Table(title=f"trace lengths: {len(rows)} rows, tokens of the {kind} tokenizer (vocab {args.vocab})")
    for col in ("group", "n", "compl p50", "p95", "max", "prompt p50", "chars/token", "Nemotron est. p95 (lo-hi)",
                f"> {MAX_COMPLETION}"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in sorted(by):
        m = by[g]
        ct = m["completion_tokens"]
        ratio = sum(m["completion_chars"]) / max(1, sum(ct))
        rec = {"n": len(ct), "completion_p50": _pct(ct, .5), "completion_p95": _pct(ct, .95), "completion_max": max(ct),
               "prompt_p50": _pct(m["prompt_tokens"], .5), "chars_per_token": round(ratio, 2),
               "nemotron_p95_low": round(_pct(m["nemotron_low"], .95)),
               "nemotron_p95_high": round(_pct(m["nemotron_high"], .95)),
               "nemotron_max_high": round(max(m["nemotron_high"])),
               "over_limit": sum(x > MAX_COMPLETION for x in ct)}
        report["groups"][g] = rec
        t.add_row(g, str(rec["n"]), str(rec["completion_p50"]), str(rec["completion_p95"]), str(rec["completion_max"]),
                  str(rec["prompt_p50"]), f"{ratio:.2f}", f"{rec['nemotron_p95_low']}-{rec['nemotron_p95_high']}",
                  str(rec["over_limit"]))
    Console(width=None if sys.stdout.isatty() else 150).print(t)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
