"""The recall stage's rows and the recall measurement of every evaluation, on the session's tokenizer and engine.

Rows: the drilled entries (``puzzles.recall.entries``), each seen ``recall.exposures`` times (one shuffled
pass per exposure), packed in order into rows of at most ``requests_per_row`` requests and
``sft.max_length`` tokens. A packed row is one token sequence: each request rendered exactly as SFT renders
a single row (``session.chat_prompt`` of the request, then the completion and the end-of-turn token, TRL's
way), the prompt tokens masked out of the loss (-100), every answer kept in. ``fastnemo.sft.train`` takes
these rows as they are (TRL skips its own tokenisation for a dataset with ``input_ids`` and ``labels``): one
training code path. An entry longer than ``sft.max_length`` alone is refused, never truncated.

The requests of one row follow each other like turns of one conversation: Mamba's state and attention run
across them (no varlen boundaries), as in a multi-turn chat; the anchor (3rd place) packed ~16 a sample.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from puzzles.recall import Entry, exposure_order, recall_requests, score_recall


def segment(session, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one request as TRL builds a prompt/completion row: the chat prompt, the
    completion and the end-of-turn token; the loss on the tokens after the common prefix with the prompt."""
    tok = session.tokenizer
    text = session.chat_prompt(prompt)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = tok(text + completion + tok.eos_token, add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(prompt_ids), len(ids)) and prompt_ids[k] == ids[k]:
        k += 1
    return ids, [-100] * k + ids[k:]


def pack_rows(session, drilled: list[Entry], exposures: int, requests_per_row: int, max_length: int,
              seed: int = 0) -> list[dict]:
    """The recall stage's training rows (see the module doc): {"input_ids", "labels", "requests": the entry
    keys, "tokens"}. ValueError naming the entry when one is longer than ``max_length`` by itself."""
    segments = {}
    for e in drilled:
        ids, labels = segment(session, e.prompt, e.completion)
        if len(ids) > max_length:
            raise ValueError(f"recall: the {e.kind} entry {e.key!r} is {len(ids)} tokens, longer than "
                             f"sft.max_length = {max_length}; raise sft.max_length or drill fewer entries "
                             "(recall.coverage / recall.limit)")
        segments[(e.kind, e.key)] = ids, labels
    rows, ids, labels, keys = [], [], [], []
    for e in exposure_order(drilled, exposures, seed):
        seg_ids, seg_labels = segments[(e.kind, e.key)]
        if keys and (len(keys) == requests_per_row or len(ids) + len(seg_ids) > max_length):
            rows.append({"input_ids": ids, "labels": labels, "requests": keys, "tokens": len(ids)})
            ids, labels, keys = [], [], []
        ids, labels, keys = ids + seg_ids, labels + seg_labels, keys + [f"{e.kind}:{e.key}"]
    if keys:
        rows.append({"input_ids": ids, "labels": labels, "requests": keys, "tokens": len(ids)})
    return rows


def requests(tokenizer, drilled: list[Entry], n: int, max_tokens: int) -> list[dict]:
    """The fixed recall sample (``puzzles.recall.recall_requests``) as generation requests, token counts from
    ``tokenizer``; entries needing more than ``max_tokens`` (the cap the puzzles get) are left out. Sorted by
    length: a static batch generates to its longest request."""
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    kept = [r for r in recall_requests(drilled, n, count) if r["max_tokens"] <= max_tokens]
    return sorted(kept, key=lambda r: r["max_tokens"])


def score(reqs: list[dict], outputs: list[str], max_tokens: int) -> tuple[dict, list[dict]]:
    """(summary, per-request records) of ``outputs``, one a request; an empty sample says why."""
    if not reqs:
        return {"n": 0, "skipped": f"no sampled entry fits eval.sampling.max_tokens = {max_tokens}"}, []
    summary = score_recall(reqs, outputs)
    return summary, summary.pop("records")


def measure(session, drilled: list[Entry], n: int, sampling, batch_size: int) -> tuple[dict, list[dict]]:
    """Exact greedy recall of a fixed sample of ``n`` drilled entries through the session's engine, the
    puzzles' generation path (a drill prompt is rendered like a puzzle). Returns (summary, records)."""
    reqs = requests(session.tokenizer, drilled, n, sampling.max_tokens)
    outputs = []
    for start in range(0, len(reqs), batch_size):
        batch = reqs[start : start + batch_size]
        greedy = dataclasses.replace(sampling, n=1, temperature=0.0, max_tokens=batch[-1]["max_tokens"])
        outputs += [c[0].text for c in session.generate([r["prompt"] for r in batch], greedy)]
    return score(reqs, outputs, sampling.max_tokens)


def write(out_dir: Path, summary: dict, records: list[dict]) -> Path:
    from puzzles.files import write_json, write_jsonl

    write_jsonl(Path(out_dir) / "recall.jsonl", records)
    return write_json(Path(out_dir) / "recall.json", summary)
