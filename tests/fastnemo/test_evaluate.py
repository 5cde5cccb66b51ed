"""Evaluation: summary/table/stratified on hand-made results, and a real run on the tiny model that writes
results.jsonl and resumes from a planted partial file."""

from __future__ import annotations

import collections
import json

import pytest
from rich.console import Console

from fastnemo.config import Recipe, SamplingConfig
from fastnemo.evaluate import evaluate, evaluate_shard, merge_shards, stratified, summarize, table
from puzzles import CATEGORIES, Puzzle


def puzzle(i: int, category: str, answer: str = "7") -> Puzzle:
    return Puzzle(id=f"p{i:03d}", category=category, prompt=f"In Alice's Wonderland, puzzle {i}: 3+4?",
                  examples=[], query=None, answer=answer)


def result(category: str, correct: bool, boxed: bool = True, finish: str = "stop", n_tokens: int = 10) -> dict:
    return {"category": category, "correct": correct, "boxed": boxed, "finish_reason": finish,
            "n_tokens": n_tokens}


# ------------------------------------------------------------------------------------------ summarize


def test_summarize_counts_per_category_and_failure_modes():
    results = [
        result("cipher", True, n_tokens=10),
        result("cipher", False, boxed=False, finish="length", n_tokens=30),
        result("gravity", True, n_tokens=20),
        result("equations", False, boxed=False, n_tokens=40),
    ]
    s = summarize(results)
    assert s["n"] == 4 and s["accuracy"] == pytest.approx(0.5)
    assert s["per_category"]["cipher"] == {"correct": 1, "n": 2, "accuracy": 0.5}
    assert s["per_category"]["gravity"]["accuracy"] == 1.0
    assert s["per_category"]["equations"]["accuracy"] == 0.0
    assert "unit_conversion" not in s["per_category"]
    assert s["truncated"] == 1 and s["unboxed"] == 2
    assert s["mean_tokens"] == pytest.approx(25.0)


def test_summarize_empty():
    s = summarize([])
    assert s["n"] == 0 and s["accuracy"] == 0.0 and s["per_category"] == {} and s["mean_tokens"] == 0.0


def render(t) -> str:
    import io

    c = Console(width=120, record=True, file=io.StringIO())
    c.print(t)
    return c.export_text()


def test_table_rows_in_category_order_with_overall():
    s = summarize([result("gravity", True), result("bit_manipulation", False), result("bit_manipulation", True)])
    text = render(table(s, title="my eval"))
    assert "my eval" in text
    assert text.index("bit_manipulation") < text.index("gravity")  # CATEGORIES order, not input order
    assert "50.0%" in text and "100.0%" in text
    all_line = next(line for line in text.splitlines() if "all" in line)
    assert "2" in all_line and "3" in all_line and "66.7%" in all_line
    assert "truncated 0" in text and "unboxed 0" in text


# ----------------------------------------------------------------------------------------- stratified


def make_set(counts: dict[str, int]) -> list[Puzzle]:
    out, i = [], 0
    for cat, n in counts.items():
        for _ in range(n):
            out.append(puzzle(i, cat))
            i += 1
    return out


def test_stratified_takes_equal_shares():
    ps = make_set({c: 20 for c in CATEGORIES})
    got = stratified(ps, 12)
    assert len(got) == 12 and len({p.id for p in got}) == 12
    assert collections.Counter(p.category for p in got) == {c: 2 for c in CATEGORIES}


def test_stratified_small_category_does_not_stall():
    ps = make_set({"cipher": 1, "gravity": 30})
    got = stratified(ps, 10)
    cats = collections.Counter(p.category for p in got)
    assert cats == {"cipher": 1, "gravity": 9}


def test_stratified_deterministic_and_seeded():
    ps = make_set({c: 30 for c in CATEGORIES})
    a = [p.id for p in stratified(ps, 18, seed=0)]
    assert a == [p.id for p in stratified(list(ps), 18, seed=0)]
    assert a != [p.id for p in stratified(list(ps), 18, seed=1)]


def test_stratified_no_limit_or_big_limit_is_identity():
    ps = make_set({"cipher": 3, "gravity": 2})
    assert stratified(ps, 0) == ps
    assert stratified(ps, 99) == ps


# ---------------------------------------------------------------------------------- evaluate (tiny)


SAMPLING = SamplingConfig(max_tokens=3)


def eval_set() -> list[Puzzle]:
    return [puzzle(i, CATEGORIES[i % len(CATEGORIES)]) for i in range(6)]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_writes_results(tiny_session, tmp_path):
    out = tmp_path / "results.jsonl"
    ps = eval_set()
    s = evaluate(tiny_session, ps, SAMPLING, out, batch_size=4)
    rows = read_lines(out)
    assert [r["id"] for r in rows] == [p.id for p in ps]
    for r in rows:
        assert set(r) >= {"id", "category", "answer", "prediction", "correct", "boxed", "finish_reason",
                          "n_tokens", "output"}
        assert r["finish_reason"] in ("stop", "length")
        assert isinstance(r["correct"], bool) and isinstance(r["boxed"], bool)
        assert r["n_tokens"] <= SAMPLING.max_tokens
        if r["finish_reason"] == "length":
            assert r["n_tokens"] == SAMPLING.max_tokens
    assert not out.with_suffix(".partial.jsonl").exists()  # renamed into place once complete
    assert s["n"] == 6 and s["accuracy"] == sum(r["correct"] for r in rows) / 6
    assert set(s["per_category"]) == set(CATEGORIES)


def spy_generate(session, calls: list):
    real = session.generate

    def generate(prompts, sampling):
        calls.append(list(prompts))
        return real(prompts, sampling)

    session.generate = generate


def test_evaluate_resumes_from_partial(tiny_session, tmp_path):
    out = tmp_path / "results.jsonl"
    ps = eval_set()
    planted = {"id": ps[0].id, "category": ps[0].category, "answer": "7", "prediction": "7", "correct": True,
               "boxed": True, "finish_reason": "stop", "n_tokens": 5, "output": "PLANTED \\boxed{7}"}
    partial = out.with_suffix(".partial.jsonl")
    partial.write_text(json.dumps(planted) + "\n" + '{"id": "p001", "categ')  # a second line torn by a crash
    calls = []
    spy_generate(tiny_session, calls)
    s = evaluate(tiny_session, ps, SAMPLING, out, batch_size=64)
    generated = [prompt for batch in calls for prompt in batch]
    assert ps[0].prompt not in generated  # already done: not regenerated
    assert sorted(generated) == sorted(p.prompt for p in ps[1:])  # the torn one is redone
    rows = read_lines(out)  # every line of the final file parses (the torn line is gone)
    assert [r["id"] for r in rows] == [p.id for p in ps]
    assert rows[0]["output"] == "PLANTED \\boxed{7}"
    assert s["per_category"][ps[0].category]["correct"] == 1 + sum(
        r["correct"] for r in rows[1:] if r["category"] == ps[0].category)
    assert s["n"] == 6


def test_evaluate_fully_done_partial_generates_nothing(tiny_session, tmp_path):
    out = tmp_path / "results.jsonl"
    ps = eval_set()[:2]
    lines = [{"id": p.id, "category": p.category, "answer": p.answer, "prediction": None, "correct": False,
              "boxed": False, "finish_reason": "length", "n_tokens": 3, "output": "x"} for p in ps]
    out.with_suffix(".partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    calls = []
    spy_generate(tiny_session, calls)
    s = evaluate(tiny_session, ps, SAMPLING, out)
    assert calls == []
    assert s["truncated"] == 2 and s["unboxed"] == 2 and s["accuracy"] == 0.0


def test_a_sharded_evaluation_merges_to_the_unsharded_results_file(tmp_path, tiny_session):
    """Three shards (round-robin, as N processes of a run evaluate), each evaluated into its own file, merge into
    byte for byte the file one process writes; a finished shard evaluated again generates nothing."""
    from fastnemo.recipe import Context, validation_set

    puzzles = validation_set(Context(recipe=Recipe(), run=None))[:7]
    sampling = SamplingConfig(max_tokens=6)
    (tmp_path / "one").mkdir()
    whole = evaluate(tiny_session, puzzles, sampling, tmp_path / "one" / "results.jsonl", batch_size=1)
    out = tmp_path / "three" / "results.jsonl"
    out.parent.mkdir()
    for r in range(3):
        evaluate_shard(tiny_session, puzzles, sampling, out, 1, r, 3)
    assert [len(out.with_name(f"results.rank{r}.jsonl").read_text().splitlines()) for r in range(3)] == [3, 2, 2]
    merged = merge_shards(puzzles, out)
    assert out.read_bytes() == (tmp_path / "one" / "results.jsonl").read_bytes()
    assert merged == whole

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished shard must not generate again")

    tiny_session.generate = no_generation
    evaluate_shard(tiny_session, puzzles, sampling, out, 1, 0, 3)
    out.with_name("results.rank2.jsonl").unlink()  # a shard that never finished: the merge refuses
    with pytest.raises(RuntimeError, match="2 prompts have no result"):
        merge_shards(puzzles, out)
