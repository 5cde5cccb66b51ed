"""Model audit of SFT traces: how learnable each trace is for a model, by teacher forcing (no generation).

For each row the prompt is rendered exactly as the competition renders it (``ModelSession.chat_prompt``),
the completion appended, and ONE forward pass per batch gives every completion token's log-prob under the
model and whether greedy decoding would have picked it. Reported per category: the token-weighted mean and
the minimum log-prob, the share of tokens under ln 2 (p < 0.5: the midpoint winner's flag), the first
position greedy decoding leaves the trace (4th place: "80 % match ~ 95 % generation match"), and the weakest
lines (lowest mean log-prob) with their text. On a GPU this audits traces against the real Nemotron before
training and the SFT adapter after it.
"""

from __future__ import annotations

import bisect
import collections
import math
from typing import Any

import torch

LN2 = math.log(2.0)


def _encode(session, row: dict) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    tok = session.tokenizer
    prompt = tok(session.chat_prompt(row["prompt"]), add_special_tokens=False)["input_ids"]
    enc = tok(row["completion"], add_special_tokens=False, return_offsets_mapping=True)
    return prompt, enc["input_ids"], enc["offset_mapping"]


@torch.no_grad()
def score_batch(session, rows: list[dict]) -> list[dict[str, Any]]:
    """Per row: completion token log-probs, greedy agreement, first divergence, per-line scores."""
    model = session.model
    encoded = [_encode(session, r) for r in rows]
    seqs = [p + c for p, c, _ in encoded]
    width = max(len(s) for s in seqs)
    pad = session.tokenizer.pad_token_id or 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # right padding: every real token keeps its position
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids.to(session.device), attention_mask=mask.to(session.device)).logits
    out = []
    for i, (row, (prompt, comp, offsets)) in enumerate(zip(rows, encoded, strict=True)):
        n0 = len(prompt)
        step = logits[i, n0 - 1 : n0 - 1 + len(comp)].float()  # position t predicts token t + 1
        target = torch.tensor(comp, device=step.device)
        logp = torch.log_softmax(step, dim=-1).gather(1, target[:, None])[:, 0].cpu()
        agree = (step.argmax(-1) == target).cpu()
        first = int((~agree).nonzero()[0, 0]) if not bool(agree.all()) else None
        out.append({"id": row["id"], "category": row["category"], "logp": logp.tolist(),
                    "first_divergence": first, "tokens": len(comp),
                    "lines": _lines(row["completion"], offsets, logp.tolist())})
    return out


def _lines(text: str, offsets, logp: list[float]) -> list[dict]:
    """Mean and min log-prob per line of the completion (tokens placed by their first character)."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    by = collections.defaultdict(list)
    for (a, _), lp in zip(offsets, logp, strict=True):
        by[bisect.bisect_right(starts, a) - 1].append(lp)
    lines = text.split("\n")
    return [{"line": n, "mean": sum(v) / len(v), "min": min(v), "text": lines[n][:160]}
            for n, v in sorted(by.items())]


def score_rows(session, rows: list[dict], batch_size: int = 8, progress: bool = False) -> list[dict]:
    from rich.progress import track

    session.model.eval()
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    out = []
    for b in track(batches, description="teacher forcing", disable=not progress):
        out += score_batch(session, b)
    return out


def summarize(records: list[dict], weakest: int = 5) -> dict[str, Any]:
    """Per category and "all": mean / min token log-prob, share under ln 2, first divergence, weakest lines."""
    by = collections.defaultdict(list)
    for r in records:
        by[r["category"]].append(r)
        by["all"].append(r)
    out = {}
    for cat in sorted(set(by) - {"all"}) + ["all"]:
        rs = by[cat]
        lps = [x for r in rs for x in r["logp"]]
        firsts = [r["first_divergence"] for r in rs]
        diverged = sorted(f for f in firsts if f is not None)
        lines = sorted(((ln["mean"], r["id"], ln) for r in rs for ln in r["lines"]), key=lambda x: x[0])
        out[cat] = {
            "rows": len(rs),
            "tokens": len(lps),
            "mean_logp": sum(lps) / len(lps) if lps else 0.0,
            "min_logp": min(lps) if lps else 0.0,
            "share_below_ln2": sum(x < -LN2 for x in lps) / len(lps) if lps else 0.0,
            "greedy_match_rows": sum(f is None for f in firsts),
            "first_divergence_median": diverged[len(diverged) // 2] if diverged else None,
            "first_divergence_mean_share": (sum(f / max(1, r["tokens"]) for r in rs
                                                if (f := r["first_divergence"]) is not None) / len(diverged)
                                            if diverged else None),
            "weakest_lines": [{"id": i, "line": ln["line"], "mean_logp": round(m, 3),
                               "min_logp": round(ln["min"], 3), "text": ln["text"]}
                              for m, i, ln in lines[:weakest]],
        }
    return out


def write(out_dir, summary: dict[str, Any], records: list[dict]) -> None:
    """``out_dir``/trace_scores.json (the summary) and trace_scores.jsonl (per row, without the per-token
    log-probs)."""
    from pathlib import Path

    from puzzles.files import write_json, write_jsonl

    write_json(Path(out_dir) / "trace_scores.json", summary)
    write_jsonl(Path(out_dir) / "trace_scores.jsonl", ({k: v for k, v in r.items() if k != "logp"} for r in records))


def print_table(summary: dict[str, Any], title: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from fastnemo.progress import wide

    console = console or wide(Console())
    t = Table(title=title)
    for col in ("category", "rows", "tokens", "mean logp", "min logp", "< ln2", "greedy-exact rows",
                "first divergence (median token)"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for cat, e in summary.items():
        t.add_row(cat, str(e["rows"]), str(e["tokens"]), f"{e['mean_logp']:.3f}", f"{e['min_logp']:.2f}",
                  f"{e['share_below_ln2']:.1%}", str(e["greedy_match_rows"]), str(e["first_divergence_median"]))
    console.print(t)
    for w in summary.get("all", {}).get("weakest_lines", []):
        console.print(f"  weakest {w['id']} line {w['line']}: mean {w['mean_logp']} min {w['min_logp']}  {w['text']!r}")
