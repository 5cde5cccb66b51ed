"""Optional teacher traces from any OpenAI-compatible chat-completions endpoint (stdlib only).

Each puzzle (with its gold answer) is sent as the competition sends it (prompt + PROMPT_SUFFIX, one user
turn). A reply is kept only when the answer it gives passes ``puzzles.metric`` with ``strict=True``; the
kept reasoning becomes an SFT row with ``source="teacher"``.

Every reply, kept or not, is appended (and fsynced) to a JSONL cache keyed by puzzle id, so a rerun after a
crash or a kill pays for nothing twice. Transient failures (timeouts, 429, 5xx) are retried with
exponential backoff (honouring ``Retry-After``); a request that cannot succeed (401, 404, 400) stops the
run with its reason. A shared rate limiter spaces requests over all threads.

The API key is read from the environment variable named by ``api_key_env`` (never from arguments, so it
does not land in shell history or logs).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from puzzles.base import PROMPT_SUFFIX, Puzzle
from puzzles.dataset import sft_row
from puzzles.files import append_jsonl, drop_torn_tail, read_jsonl
from puzzles.metric import extract_answer, is_correct
from puzzles.traces import completion

RETRYABLE_HTTP = (408, 409, 425, 429, 500, 502, 503, 504)


@dataclasses.dataclass
class TeacherConfig:
    """One teacher endpoint and how to use it.

    base_url: the API root including the version, e.g. ``https://host/v1``; requests go to
    ``{base_url}/chat/completions``. model: the model name the endpoint expects. api_key_env: name of the
    environment variable holding the key (unset is fine for local servers). samples: replies tried per
    puzzle until one passes the metric (use temperature > 0 when > 1). rps: requests per second over all
    threads. concurrency: requests in flight. max_retries: retries of one request on transient errors,
    waiting backoff_s * 2**k (capped at backoff_max_s, with jitter). price_*_per_m: USD per million
    prompt/completion tokens, for the cost counter.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 7680
    temperature: float = 0.6
    samples: int = 1
    rps: float = 2.0
    concurrency: int = 4
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 600.0
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0


class TeacherError(RuntimeError):
    """A request that cannot succeed (bad key, unknown model, bad request) or ran out of retries."""


class RateLimiter:
    """At most ``rps`` acquisitions per second across threads: each caller gets the next free slot."""

    def __init__(self, rps: float):
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.next_t = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_t)
            self.next_t = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


@dataclasses.dataclass
class Counter:
    """Requests, retries, tokens and cost over a run (thread-safe via ``add``)."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_usage: int = 0  # replies without a usage block: tokens estimated as characters / 4
    cost_usd: float = 0.0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "lock"}


def _post(cfg: TeacherConfig, body: dict, key: str | None) -> dict:
    req = urllib.request.Request(
        cfg.base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
        return json.loads(resp.read())


def chat(
    cfg: TeacherConfig, messages: list[dict], limiter: RateLimiter, counter: Counter, key: str | None = None
) -> dict:
    """One chat completion with retries on transient failures; returns the response JSON."""
    body = {
        "model": cfg.model,
        "messages": messages,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
    }
    last = ""
    for attempt in range(cfg.max_retries + 1):
        if attempt:
            counter.add(retries=1)
        limiter.acquire()
        counter.add(requests=1)
        wait = min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
        try:
            return _post(cfg, body, key)
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            if e.code not in RETRYABLE_HTTP:
                raise TeacherError(f"{cfg.base_url}: HTTP {e.code} {e.reason}: {detail}") from None
            last = f"HTTP {e.code}: {detail}"
            retry_after = e.headers.get("Retry-After") if e.headers else None
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                wait = min(cfg.backoff_max_s, float(retry_after))
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(wait)
    raise TeacherError(f"{cfg.base_url}: gave up after {cfg.max_retries + 1} attempts; last error {last}")


def split_reply(resp: dict) -> tuple[str, str]:
    """(reasoning, final content) of a reply: a separate ``reasoning_content``/``reasoning`` field when the
    server gives one, else a ``<think>...</think>`` block inside the content."""
    msg = resp["choices"][0]["message"]
    content = msg.get("content") or ""
    reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
    if not reasoning and "</think>" in content:
        reasoning, content = content.split("</think>", 1)
        reasoning = reasoning.replace("<think>", "", 1)
    return reasoning.strip(), content.strip()


def _ask(
    puzzle: Puzzle, sample: int, cfg: TeacherConfig, limiter: RateLimiter, counter: Counter, key: str | None
) -> dict:
    """One sample for one puzzle -> the cache record (passed or not)."""
    t0 = time.time()
    resp = chat(cfg, [{"role": "user", "content": puzzle.prompt + PROMPT_SUFFIX}], limiter, counter, key)
    reasoning, content = split_reply(resp)
    usage = resp.get("usage") or {}
    p_tok, c_tok = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if p_tok is None or c_tok is None:
        p_tok, c_tok = len(puzzle.prompt) // 4, (len(reasoning) + len(content)) // 4
        counter.add(estimated_usage=1)
    cost = p_tok * cfg.price_in_per_m / 1e6 + c_tok * cfg.price_out_per_m / 1e6
    counter.add(prompt_tokens=p_tok, completion_tokens=c_tok, cost_usd=cost)
    # The harness scores the whole output; the box normally sits in the content after the reasoning.
    answer = extract_answer(f"{reasoning}\n{content}")
    return {
        "id": puzzle.id,
        "sample": sample,
        "model": cfg.model,
        "passed": is_correct(answer, puzzle.answer or "", strict=True) if puzzle.answer else False,
        "extracted": answer,
        "reasoning": reasoning,
        "content": content,
        "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok},
        "seconds": round(time.time() - t0, 3),
    }


def to_row(puzzle: Puzzle, rec: dict) -> dict:
    """The SFT row of a passing reply: the teacher's reasoning (or, without one, its whole content)."""
    text = rec["reasoning"] or rec["content"]
    # "verified": a model's answer checked against gold (the reasoning itself is the teacher's)
    return sft_row(puzzle, completion(text, puzzle.answer), "teacher", "verified", teacher_model=rec["model"])


def load_cache(path: Path, model: str) -> dict[str, list[dict]]:
    """Cached records of ``model`` by puzzle id; a torn last line (a kill mid-write) is skipped."""
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for rec in read_jsonl(path):
        if rec.get("model") == model:
            by[rec["id"]].append(rec)
    return by


def fill(
    puzzles: list[Puzzle], cfg: TeacherConfig, cache_path: str | Path, progress: bool = True
) -> tuple[list[dict], dict]:
    """Teacher rows for ``puzzles`` (which need gold answers). Returns (rows, stats). Puzzles already
    decided in the cache (a passing sample, or ``samples`` failing ones) cost no request."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    missing = [p.id for p in puzzles if not p.answer]
    if missing:
        raise TeacherError(
            f"{len(missing)} puzzle(s) have no gold answer to check against, e.g. {missing[:3]}"
        )
    cache_path = Path(cache_path)
    drop_torn_tail(cache_path)  # a resume that appends nothing still leaves whole lines only
    cache = load_cache(cache_path, cfg.model)
    key = os.environ.get(cfg.api_key_env) or None
    limiter, counter, lock = RateLimiter(cfg.rps), Counter(), threading.Lock()
    stats = collections.Counter()
    stop = threading.Event()

    def decided(recs: list[dict]) -> bool:
        return any(r["passed"] for r in recs) or len(recs) >= cfg.samples

    todo = [p for p in puzzles if not decided(cache.get(p.id, []))]
    stats["cached"] = len(puzzles) - len(todo)

    with Progress(TextColumn("[bold]teacher"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), disable=not progress) as bar:
        task = bar.add_task("teacher", total=len(todo), info="")

        def work(p: Puzzle) -> None:
            recs = cache.get(p.id, [])
            while not decided(recs) and not stop.is_set():
                rec = _ask(p, len(recs), cfg, limiter, counter, key)
                with lock:
                    append_jsonl(cache_path, [rec])  # fsynced: a kill loses at most this reply
                    cache[p.id] = recs = recs + [rec]
            with lock:
                bar.advance(task)
                bar.update(task, info=f"{counter.completion_tokens} out-tok ${counter.cost_usd:.2f}")

        with concurrent.futures.ThreadPoolExecutor(max(1, cfg.concurrency)) as pool:
            futures = {pool.submit(work, p): p for p in todo}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    fut.result()
                except TeacherError as e:
                    if "gave up" not in str(e):  # a permanent error: every other request would fail too
                        stop.set()
                        for f in futures:
                            f.cancel()
                        raise
                    stats["gave_up"] += 1  # not cached: a rerun tries again

    rows = []
    for p in puzzles:
        recs = cache.get(p.id, [])
        passing = next((r for r in recs if r["passed"]), None)
        if passing is not None:
            rows.append(to_row(p, passing))
            stats["kept"] += 1
        elif recs and decided(recs):
            stats["rejected"] += 1
    stats.update({k: v for k, v in counter.as_dict().items()})
    return rows, dict(stats)
