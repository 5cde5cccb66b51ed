"""Self-distillation: verification keeps only correct, complete, well-formed traces; Goldilocks selection;
the generation cache survives a kill; the next SFT mix; a real run on the tiny model, resumed."""

from __future__ import annotations

import json

import pytest

from fastnemo import distill
from fastnemo.config import DistillConfig, Recipe
from puzzles import Puzzle, files
from puzzles.dataset import check_sft_row
from puzzles.files import read_jsonl, write_jsonl


def cand(text, n_tokens, finish="stop"):
    return {"text": text, "n_tokens": n_tokens, "finish_reason": finish}


def puzzle(answer="XIV", pid="p1", category="numeral_system"):
    return Puzzle(id=pid, category=category, prompt=f"In Alice's Wonderland ... {pid}", examples=[], query=None,
                  answer=answer)


def test_select_keeps_only_verified_shortest_first():
    p = puzzle()
    candidates = [
        cand("long but right\n</think>\n\\boxed{XIV}", 40),
        cand("short and right\n</think>\n\\boxed{XIV}", 10),
        cand("same reasoning\n</think>\n\\boxed{XIV}", 12),
        cand("same reasoning\n</think>\n\\boxed{ XIV }", 13),  # same reasoning again: not kept twice
        cand("wrong\n</think>\n\\boxed{XV}", 5),
        cand("cut off while right \\boxed{XIV}", 64, finish="length"),  # correct but truncated
        cand("no think close, right \\boxed{XIV}", 6),  # correct but malformed
        cand("right, boxed twice\n</think>\n\\boxed{XIV} \\boxed{XIV}", 7),  # correct but malformed
    ]
    rows, stats = distill.select(p, candidates, keep=2)
    assert [r["completion"] for r in rows] == [
        "short and right\n</think>\n\\boxed{XIV}",
        "same reasoning\n</think>\n\\boxed{XIV}",
    ]
    # pass rate counts every answer the metric accepts (7 of 8), traces only the clean ones
    assert stats["correct"] == 7 and stats["pass_rate"] == pytest.approx(7 / 8) and stats["kept"] == 2
    assert stats["truncated"] == 1
    for r in rows:
        assert r["source"] == "distill" and r["status"] == "verified" and r["answer"] == "XIV"
        # the SFT contract, but for the status value the puzzles package does not know yet
        assert check_sft_row({**r, "status": "deduced"}) is None
    rows, _ = distill.select(p, candidates, keep=10)
    assert len(rows) == 3  # three distinct clean reasonings exist


def test_select_canonicalizes_the_answer_tail_and_rejects_wrong():
    p = puzzle(answer="12.50")
    rows, stats = distill.select(p, [cand("r\n</think>\nso \\boxed{12.5}.", 9)], keep=1)
    assert rows[0]["completion"] == "r\n</think>\n\\boxed{12.50}"  # gold answer, exact format
    rows, stats = distill.select(p, [cand("r\n</think>\n\\boxed{13.5}", 9)] * 4, keep=1)
    assert rows == [] and stats["pass_rate"] == 0.0


def test_goldilocks_bounds_inclusive():
    rates = [{"id": str(i), "pass_rate": i / 5} for i in range(6)]  # 0, .2, .4, .6, .8, 1
    assert [r["id"] for r in distill.goldilocks(rates, 0.2, 0.8)] == ["1", "2", "3", "4"]
    assert [r["id"] for r in distill.goldilocks(rates, 0.5, 0.7)] == ["3"]
    assert distill.goldilocks(rates, 0.9, 0.95) == []


def test_cache_drops_torn_last_line(tmp_path):
    path = tmp_path / distill.CACHE
    files.append_jsonl(path, [{"id": "a", "candidates": [cand("x", 1)]}])
    with open(path, "a") as f:
        f.write('{"id": "b", "candidates": [{"te')  # a kill mid-write
    assert list(distill.read_cache(path)) == ["a"]
    files.append_jsonl(path, [{"id": "c", "candidates": []}])  # appends on a clean line
    assert list(distill.read_cache(path)) == ["a", "c"]


def _sft(pid, category, prompt=None, source="solver"):
    return {"id": pid, "category": category, "prompt": prompt or f"prompt {pid}", "answer": "1",
            "completion": "r\n</think>\n\\boxed{1}", "source": source, "status": "deduced", "features": {}}


def test_mix_next_carry_dedupe_and_floors(tmp_path):
    new = [_sft(f"n{i}", "gravity", source="distill") for i in range(6)]
    new.append(_sft("dup", "gravity", prompt="prompt  p0", source="distill"))  # same prompt as p0 (whitespace)
    prev = [_sft(f"p{i}", "gravity") for i in range(20)] + [_sft(f"c{i}", "cipher") for i in range(20)]
    write_jsonl(tmp_path / "traces.jsonl", new)
    write_jsonl(tmp_path / "prev.jsonl", prev)
    stats = distill.mix_next(tmp_path / "traces.jsonl", tmp_path / "prev.jsonl", tmp_path / "out.jsonl",
                             carry_share=0.1, seed=0, floor=5)
    rows = read_jsonl(tmp_path / "out.jsonl", strict=True)
    prompts = [" ".join(r["prompt"].split()) for r in rows]
    assert len(prompts) == len(set(prompts))  # deduplicated by prompt
    assert sum(r["source"] == "distill" for r in rows) == 7  # every new trace
    assert stats["carried"] == 4  # 10 % of 40 previous rows
    assert stats["duplicates"] == 1
    counts = stats["per_category"]
    assert counts["cipher"] >= 5 and counts["gravity"] >= 5
    assert stats["rows"] == len(rows) == 7 + 4 + stats["topped_up"]
    again = distill.mix_next(tmp_path / "traces.jsonl", tmp_path / "prev.jsonl", tmp_path / "out2.jsonl",
                             carry_share=0.1, seed=0, floor=5)
    assert again == stats and read_jsonl(tmp_path / "out2.jsonl", strict=True) == rows  # deterministic per seed


def test_generate_puzzles_deterministic():
    a, b = distill.generate_puzzles(12, seed=3), distill.generate_puzzles(12, seed=3)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert len({p.category for p in a}) == 6 and all(p.answer for p in a)


def test_run_on_tiny_model_resumes_and_keeps_planted_trace(tiny_session, tmp_path):
    """A real distill on the tiny model. A random model never solves a puzzle, so one correct candidate is
    planted in the cache as if an earlier (killed) run had produced it: the run must reuse it, generate
    only the rest, and keep exactly that trace (the random model's own candidates are all rejected)."""
    recipe = Recipe(distill=DistillConfig(prompts=3, k=2, keep=1, temperature=1.0, max_tokens=4,
                                          goldilocks_low=0.5, goldilocks_high=0.5))
    puzzles = distill.load_prompts(recipe, seed=0)
    first = puzzles[0]
    planted = [cand(f"planted\n</think>\n\\boxed{{{first.answer}}}", 5), cand("noise", 4, "length")]
    files.append_jsonl(tmp_path / distill.CACHE, [distill.cache_record(first, planted, keep=1)])
    with open(tmp_path / distill.CACHE, "a") as f:
        f.write('{"id": "torn')  # and the kill cut the next line

    asked = []
    generate = tiny_session.generate
    tiny_session.generate = lambda texts, sampling: asked.extend(texts) or generate(texts, sampling)
    summary = distill.run(tiny_session, recipe, tmp_path, seed=0)

    assert asked == [p.prompt for p in puzzles[1:]]  # the cached puzzle was not generated again
    traces = read_jsonl(tmp_path / "traces.jsonl", strict=True)
    assert [(t["id"], t["completion"]) for t in traces] == [(first.id, planted[0]["text"])]
    rates = {r["id"]: r["pass_rate"] for r in read_jsonl(tmp_path / "passrates.jsonl", strict=True)}
    assert rates[first.id] == 0.5 and len(rates) == 3
    assert [g["id"] for g in read_jsonl(tmp_path / "goldilocks.jsonl", strict=True)] == [first.id]
    assert (tmp_path / "passrates.png").stat().st_size > 1000
    assert summary["prompts"] == 3 and summary["traces"] == 1 and summary["candidates"] == 6
    cached = [json.loads(line) for line in (tmp_path / distill.CACHE).read_text().splitlines()]
    assert [r["id"] for r in cached] == [p.id for p in puzzles]
    assert all(r["k"] == 2 for r in cached)


def test_distill_command(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from fastnemo.cli import main

    res = CliRunner().invoke(main, ["distill", "--model", str(tiny_model_dir), "prompts=2", "k=2",
                                    "max_tokens=4", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["prompts"] == 2 and summary["candidates"] == 4
    for name in ("traces.jsonl", "passrates.jsonl", "goldilocks.jsonl", "passrates.png"):
        assert (tmp_path / "d" / name).exists()
