"""What the traces recall, as one catalog of drill entries: its order, its coverage cut, and how recall of it
is measured (torch-free: the recall stage, every evaluation and a vLLM harness all call these).

An ENTRY is one recall request and its exact answer: the cipher word list of one length
(``puzzles.cipher.drill_rows``) or the cryptarithm catalog entry of one signature
(``puzzles.cryptarithm.drill_text``). Its completion is the very text the traces recite (tests check it).

Order and coverage: the word lists always come first (9 entries); the cryptarithm signatures follow by
their PRIOR MASS, the probability that one example line of the generator has that signature: the rule
prior (``equations_rules.RULE_PRIOR``, a rule-level prior of the generator) times uniform operand pairs 00..99.
It is a general prior over the rule space, never a lookup of any real puzzle. ``entries(coverage)`` keeps
the shortest prefix holding that share of the catalog's prior mass; ``bench/recall_coverage.py`` measures
what a prefix covers of the real cryptarithms (train_dev).

Measurement: ``recall_requests`` picks a fixed sample spread over entry lengths, ``score_recall`` reads
the outputs back: exact when the output starts with the entry's reasoning and closes the thought.
"""

from __future__ import annotations

import dataclasses
import functools
import random

from puzzles.traces import THINK_CLOSE, completion

KINDS = ("cipher", "cryptarithm")
# Length buckets of an entry's reasoning, in characters (a catalog entry holds 1 to 1,000 candidates).
BUCKETS = ((0, 200, "short"), (200, 1000, "medium"), (1000, 4000, "long"), (4000, 10**9, "very_long"))


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # "cipher" (a word list by length) or "cryptarithm" (a catalog entry by signature)
    key: str  # the word length or the signature
    prompt: str  # the request (a user turn, rendered like a puzzle's)
    body: str  # the recalled text: exactly what a trace recites
    answer: str  # the count of words / candidates (boxed like any row's answer)
    prior: float  # the entry's prior mass (cipher lists: 1, they are always drilled)

    @property
    def completion(self) -> str:
        """The assistant turn a drill trains: the recalled text, the closed thought, the boxed count."""
        return completion(self.body, self.answer)

    @property
    def bucket(self) -> str:
        return next(name for lo, hi, name in BUCKETS if lo <= len(self.body) < hi)


@functools.lru_cache(maxsize=1)
def signature_prior() -> dict[str, float]:
    """signature -> share of one generated example line (rule prior x uniform operand pairs) falling on it,
    over the catalog's signatures (normalised to sum to 1 over them)."""
    from puzzles import cryptarithm
    from puzzles.equations_rules import RULE_PRIOR

    catalog = cryptarithm.catalog()
    mass: dict[str, float] = dict.fromkeys(catalog, 0.0)
    for r in cryptarithm.PRIOR_ORDER:
        weight = RULE_PRIOR.get((r.op, r.rev, r.sign), 0.5)
        for a in range(100):
            for b in range(100):
                lhs = f"{a:02d}?{b:02d}"
                rhs = r.apply(lhs)
                if rhs is not None:
                    sig = cryptarithm.signature(lhs, rhs)
                    if sig in mass:
                        mass[sig] += weight
    total = sum(mass.values()) or 1.0
    return {s: m / total for s, m in mass.items()}


@functools.lru_cache(maxsize=1)
def catalog_entries() -> tuple[Entry, ...]:
    """Every drill entry in drill order: the cipher word lists, then the signatures by prior mass (ties by
    signature)."""
    from puzzles import cipher, cryptarithm

    out = [Entry("cipher", prompt.split(" for words of ")[1].split()[0], prompt, body, answer, 1.0)
           for prompt, body, answer in cipher.drill_rows()]
    prior = signature_prior()
    for sig in sorted(prior, key=lambda s: (-prior[s], s)):
        prompt, body, answer = cryptarithm.drill_text(sig)
        out.append(Entry("cryptarithm", sig, prompt, body, answer, prior[sig]))
    return tuple(out)


def entries(coverage: float = 1.0, limit: int = 0) -> list[Entry]:
    """The drilled entries: the word lists and the shortest prefix of the signatures that holds ``coverage``
    of the catalog's prior mass, then at most ``limit`` entries in all (0 = no limit)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    out, mass = [], 0.0
    for e in catalog_entries():
        if e.kind == "cryptarithm":
            if mass >= coverage - 1e-12:
                break
            mass += e.prior
        out.append(e)
    return out[:limit] if limit else out


def exposure_order(drilled: list[Entry], exposures: int, seed: int = 0) -> list[Entry]:
    """``exposures`` passes over ``drilled``, each in its own seeded shuffle: every entry is seen once per pass."""
    rng = random.Random(seed)
    out = []
    for _ in range(exposures):
        order = list(drilled)
        rng.shuffle(order)
        out.extend(order)
    return out


# ------------------------------------------------------------------------------------------ measuring


def recall_requests(drilled: list[Entry], n: int, count_tokens=None, seed: int = 0) -> list[dict]:
    """A fixed sample of ``n`` entries spread over kinds and length buckets (round-robin over the
    (kind, bucket) cells, each in a seeded shuffle), as generation requests: id, kind, bucket, the prompt
    (puzzle text, rendered like a puzzle), its user ``messages`` (the suffix included, for a raw chat
    harness), ``expected`` (the recalled text) and ``max_tokens`` (``count_tokens`` of what must be written
    plus a margin; ``count_tokens`` defaults to one token a character)."""
    from puzzles.base import PROMPT_SUFFIX

    count_tokens = count_tokens or len
    cells: dict[tuple[str, str], list[Entry]] = {}
    for e in drilled:
        cells.setdefault((e.kind, e.bucket), []).append(e)
    rng = random.Random(seed)
    for cell in cells.values():
        rng.shuffle(cell)
    picked, i = [], 0
    while len(picked) < min(n, len(drilled)):
        for cell in cells.values():
            if i < len(cell) and len(picked) < n:
                picked.append(cell[i])
        i += 1
    return [{"id": f"recall-{e.kind}-{e.key}", "kind": e.kind, "bucket": e.bucket, "prompt": e.prompt,
             "messages": [{"role": "user", "content": e.prompt + PROMPT_SUFFIX}], "expected": e.body,
             "max_tokens": count_tokens(e.body + "\n" + THINK_CLOSE) + 8} for e in picked]


def recalled_exactly(expected: str, output: str) -> bool:
    """The output writes exactly the entry, then closes the thought (what follows is the boxed count)."""
    return output.lstrip().startswith(expected.strip() + "\n" + THINK_CLOSE)


def score_recall(requests: list[dict], outputs: list[str]) -> dict:
    """Exact recall overall, by kind and by length bucket: {"n", "exact", "by_kind": {kind: share},
    "by_bucket": {kind/bucket: share}, "records": one per request}."""
    if len(requests) != len(outputs):
        raise ValueError(f"score_recall: {len(requests)} requests but {len(outputs)} outputs")
    records = [{"id": r["id"], "kind": r["kind"], "bucket": r["bucket"],
                "exact": recalled_exactly(r["expected"], out), "output": out}
               for r, out in zip(requests, outputs, strict=True)]

    def share(rows):
        return sum(r["exact"] for r in rows) / len(rows)

    groups: dict[str, dict[str, list]] = {"by_kind": {}, "by_bucket": {}}
    for r in records:
        groups["by_kind"].setdefault(r["kind"], []).append(r)
        groups["by_bucket"].setdefault(f"{r['kind']}/{r['bucket']}", []).append(r)
    return {"n": len(records), "exact": share(records) if records else 0.0,
            **{g: {k: share(v) for k, v in sorted(rows.items())} for g, rows in groups.items()},
            "records": records}


def metrics(summary: dict) -> dict:
    """A recall summary as flat metrics keys: ``recall/all``, ``recall/<kind>``, ``recall/<kind>/<bucket>``."""
    return {"recall/all": summary["exact"], **{f"recall/{k}": v for k, v in summary["by_kind"].items()},
            **{f"recall/{k}": v for k, v in summary["by_bucket"].items()}}
