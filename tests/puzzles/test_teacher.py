"""The teacher client against a real HTTP server on 127.0.0.1 (stdlib http.server in a thread)."""

from __future__ import annotations

import threading
import time

import pytest

from puzzles.base import PROMPT_SUFFIX, Puzzle
from puzzles.dataset import check_sft_row
from puzzles.files import read_jsonl
from puzzles.teacher import RateLimiter, TeacherConfig, TeacherError, fill

GOLD = {f"p{i}": f"{10 + i}.50" for i in range(6)}
PROMPTS = {pid: f"In Alice's Wonderland, a secret unit conversion is applied to measurements. Puzzle {pid}."
           for pid in GOLD}


class FakeTeacher:
    """Behaviour per prompt id: ``fail_first[pid]`` 500s before answering; ``wrong`` ids always answer
    wrong; ``reasoning_field`` ids put reasoning in ``reasoning_content`` instead of <think> tags."""

    def __init__(self, fail_first: dict[str, int], wrong: set[str], status: int | None = None):
        self.fail_first, self.wrong, self.status = dict(fail_first), wrong, status
        self.requests: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, dict]:
        assert body["model"] == "tiny-teacher"
        prompt = body["messages"][-1]["content"]
        pid = next(p for p, text in PROMPTS.items() if prompt == text + PROMPT_SUFFIX)
        with self.lock:
            self.requests.append((time.monotonic(), pid))
            if self.status is not None:
                return self.status, {"error": {"message": "invalid api key"}}
            if self.fail_first.get(pid, 0) > 0:
                self.fail_first[pid] -= 1
                return 500, {"error": {"message": "overloaded"}}
        answer = "99.99" if pid in self.wrong else GOLD[pid]
        msg = {"role": "assistant", "content": f"<think>factor times x gives {answer}</think>\\boxed{{{answer}}}"}
        if pid == "p1":
            msg = {"role": "assistant", "reasoning_content": f"reasoning for {pid}", "content": f"\\boxed{{{answer}}}"}
        return 200, {"choices": [{"message": msg}], "usage": {"prompt_tokens": 100, "completion_tokens": 50}}


@pytest.fixture
def server(chat_server):
    return chat_server  # tests/conftest.py: set server["fake"] to a FakeTeacher


def _puzzles():
    return [Puzzle(id=pid, category="unit_conversion", prompt=PROMPTS[pid], examples=[], query=None,
                   answer=GOLD[pid]) for pid in GOLD]


def _cfg(url, **kw):
    base = {"base_url": url, "model": "tiny-teacher", "rps": 200, "concurrency": 3, "backoff_s": 0.01,
            "max_retries": 3, "price_in_per_m": 1.0, "price_out_per_m": 2.0}
    return TeacherConfig(**{**base, **kw})


def test_retries_filter_tokens_and_cache_resume(server, tmp_path):
    server["fake"] = FakeTeacher(fail_first={"p0": 2, "p3": 1}, wrong={"p2", "p5"})
    cache = tmp_path / "cache.jsonl"
    rows, stats = fill(_puzzles(), _cfg(server["url"]), cache, progress=False)

    assert sorted(r["id"] for r in rows) == ["p0", "p1", "p3", "p4"]  # wrong answers filtered out
    assert stats["kept"] == 4 and stats["rejected"] == 2 and stats["retries"] == 3
    assert stats["requests"] == 6 + 3
    assert stats["prompt_tokens"] == 600 and stats["completion_tokens"] == 300
    assert stats["cost_usd"] == pytest.approx((600 * 1 + 300 * 2) / 1e6)
    for r in rows:
        assert check_sft_row(r) is None and r["source"] == "teacher"
        assert r["completion"].endswith(f"</think>\n\\boxed{{{GOLD[r['id']]}}}")
        assert "<think>" not in r["completion"]
    assert next(r for r in rows if r["id"] == "p1")["completion"].startswith("reasoning for p1")
    assert len(read_jsonl(cache, strict=True)) == 6  # one record per decided sample, failures included

    # Resume: a torn last line (kill mid-append) is dropped, everything decided costs no request.
    with open(cache, "a") as f:
        f.write('{"id": "p4", "sample"')
    server["fake"] = FakeTeacher(fail_first={}, wrong=set())
    rows2, stats2 = fill(_puzzles(), _cfg(server["url"]), cache, progress=False)
    assert server["fake"].requests == []
    assert stats2["cached"] == 6 and sorted(r["id"] for r in rows2) == sorted(r["id"] for r in rows)
    assert len(read_jsonl(cache, strict=True)) == 6

    # More samples allowed: only the rejected puzzles are asked again, and now pass.
    rows3, _ = fill(_puzzles(), _cfg(server["url"], samples=2), cache, progress=False)
    assert sorted(pid for _, pid in server["fake"].requests) == ["p2", "p5"]
    assert len(rows3) == 6


def test_rate_limit_spaces_requests(server, tmp_path):
    server["fake"] = FakeTeacher(fail_first={}, wrong=set())
    rows, _ = fill(_puzzles(), _cfg(server["url"], rps=20, concurrency=4), tmp_path / "c.jsonl", progress=False)
    times = sorted(t for t, _ in server["fake"].requests)
    assert len(rows) == 6
    assert times[-1] - times[0] >= 5 / 20 * 0.9  # 6 requests at 20/s span at least 0.25 s


def test_rate_limiter_alone():
    lim = RateLimiter(50)
    t0 = time.monotonic()
    for _ in range(11):
        lim.acquire()
    assert time.monotonic() - t0 >= 10 / 50 * 0.9


def test_permanent_error_stops_with_reason(server, tmp_path):
    server["fake"] = FakeTeacher(fail_first={}, wrong=set(), status=401)
    with pytest.raises(TeacherError, match="HTTP 401"):
        fill(_puzzles(), _cfg(server["url"]), tmp_path / "c.jsonl", progress=False)
    assert len(server["fake"].requests) < 6 + 3  # stopped early, no retries of a 401


def test_gives_up_after_retries_and_does_not_cache(server, tmp_path):
    server["fake"] = FakeTeacher(fail_first={"p0": 100}, wrong=set())
    cache = tmp_path / "c.jsonl"
    rows, stats = fill(_puzzles(), _cfg(server["url"], max_retries=2), cache, progress=False)
    assert stats["gave_up"] == 1 and len(rows) == 5
    assert "p0" not in {r["id"] for r in read_jsonl(cache, strict=True)}


def test_puzzles_without_gold_are_refused(tmp_path):
    p = _puzzles()[0]
    p.answer = None
    with pytest.raises(TeacherError, match="no gold answer"):
        fill([p], _cfg("http://127.0.0.1:9/v1"), tmp_path / "c.jsonl", progress=False)
