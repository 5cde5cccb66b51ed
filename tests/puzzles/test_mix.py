"""The mix builder: shares and floors, difficulty matching, leakage and duplicate removal, resume."""

from __future__ import annotations

import collections
import csv
import random

import pytest

from puzzles import categories, mix
from puzzles.dataset import check_sft_row
from puzzles.files import read_jsonl
from puzzles.mix import MixConfig, Shard, allocate, build_mix, measure_reference, prompt_key, run_shard

# The fast, complete categories; bits and equations solvers are exercised by their own tests.
CATS = ("numeral_system", "cipher", "unit_conversion", "gravity")
# Reference composition: skewed shares, one fixed example count per category.
REF = {"numeral_system": (30, 3), "cipher": (12, 5), "unit_conversion": (6, 4), "gravity": (2, 3)}


@pytest.fixture(scope="module")
def reference_csv(tmp_path_factory):
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("ref") / "ref.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "answer"])
        for cat, (count, n_examples) in REF.items():
            for i in range(count):
                p = categories.generate(cat, rng, {"n_examples": n_examples})
                w.writerow([f"{cat}-{i}", p.prompt, p.answer])
    return path


def test_allocate_shares_floor_and_total():
    shares = {"a": 0.7, "b": 0.2, "c": 0.09, "d": 0.01}
    q = allocate(1000, shares, floor=50)
    assert sum(q.values()) == 1000 and min(q.values()) >= 50
    # d (10) is pinned to the floor; the other 950 rows are split 0.7 : 0.2 : 0.09 (c stays above the floor).
    assert q == {"a": 672, "b": 192, "c": 86, "d": 50}
    assert allocate(7, {"a": 1, "b": 1, "c": 1}) in ({"a": 3, "b": 2, "c": 2},)
    with pytest.raises(ValueError, match="exceeds n"):
        allocate(10, shares, floor=3)


def test_build_matches_reference_and_floor(reference_csv, tmp_path):
    out = tmp_path / "mix.jsonl"
    s = build_mix(MixConfig(n=120, out=str(out), like=str(reference_csv), floor=15, categories=CATS,
                            workers=2, shard_size=10, progress=False))
    rows = read_jsonl(out, strict=True)
    counts = collections.Counter(r["category"] for r in rows)
    # shares 30:12:6:2 of 120 -> 72:28.8:14.4:4.8, then unit_conversion and gravity pinned to the floor.
    assert s["quotas"] == {"numeral_system": 64, "cipher": 26, "unit_conversion": 15, "gravity": 15}
    assert dict(counts) == s["quotas"] and s["short"] == {} and len(rows) == 120
    # difficulty follows the reference: each category's example count is the one its reference rows have
    for r in rows:
        assert r["features"]["n_examples"] == REF[r["category"]][1], r["category"]
        assert check_sft_row(r) is None and r["source"] == "solver"
        # guessed rows only where the default keeps them (their answer equals the generator's exactly)
        assert r["status"] == "deduced" or r["category"] in mix.KEEP_GUESSED
        assert r["completion"].endswith(f"\\boxed{{{r['answer']}}}")
    with open(reference_csv, newline="") as f:
        ref_keys = {prompt_key(r["prompt"]) for r in csv.DictReader(f)}
    keys = [prompt_key(r["prompt"]) for r in rows]
    assert len(set(keys)) == len(keys) and not set(keys) & ref_keys
    assert len({r["id"] for r in rows}) == len(rows)
    assert s["wrong_deduced"] == 0 or s["notable_failures"]  # if a solver erred, the example is kept
    assert not (out.parent / "mix.jsonl.shards").exists()  # shards removed after success


def test_reference_prompts_never_leak():
    shard = Shard("numeral_system", 0, 0, 20, 3, [{"n_examples": 3}], ("deduced",), 5)
    _, first, _ = run_shard(shard)
    leaked = {prompt_key(r["prompt"]) for r in first[:10]}
    mix._REF_KEYS = leaked
    try:
        _, second, stats = run_shard(shard)
    finally:
        mix._REF_KEYS = set()
    assert stats["counts"]["in_reference"] == 10 and len(second) == 20
    assert not leaked & {prompt_key(r["prompt"]) for r in second}


def test_duplicates_removed_within_and_across_shards(tmp_path, monkeypatch):
    # A generator with a tiny pool of puzzles: the builder must dedupe and stop short rather than repeat.
    pool = [categories.generate("numeral_system", random.Random(i), {"n_examples": 3}) for i in range(6)]
    monkeypatch.setattr(categories, "generate", lambda cat, rng, d=None: rng.choice(pool))
    s = build_mix(MixConfig(n=20, out=str(tmp_path / "d.jsonl"), categories=("numeral_system",), workers=1,
                            shard_size=4, max_attempts=5, max_rounds=2, progress=False))
    rows = read_jsonl(tmp_path / "d.jsonl", strict=True)
    assert len(rows) == len({r["prompt"] for r in rows}) == 6
    assert s["short"] == {"numeral_system": 14}
    f = s["funnel"]["numeral_system"]
    assert f["duplicate"] > 0 and f["duplicate_across_shards"] > 0


def test_resume_reuses_finished_shards(tmp_path):
    out = tmp_path / "r.jsonl"
    cfg = MixConfig(n=30, out=str(out), categories=("numeral_system", "gravity"), workers=1, shard_size=5,
                    progress=False, keep_shards=True)
    build_mix(cfg)
    first = read_jsonl(out, strict=True)
    shard = out.parent / "r.jsonl.shards" / "gravity-r0-00001.jsonl"
    marked = shard.read_text().replace('"source": "solver"', '"source": "distill"')
    shard.write_text(marked)  # proof of reuse: the rebuilt mix carries the edited shard
    out.unlink()
    build_mix(cfg)
    second = read_jsonl(out, strict=True)
    assert [r["id"] for r in second] == [r["id"] for r in first]
    assert sum(r["source"] == "distill" for r in second) == 5
    # Other arguments: stale shards are discarded, not mixed in.
    build_mix(MixConfig(**{**cfg.__dict__, "seed": 1}))
    assert all(r["source"] == "solver" for r in read_jsonl(out, strict=True))


def test_equations_family_is_a_matched_feature():
    numeric = ("In Alice's Wonderland, a secret set of transformation rules is applied to equations. Below are a "
               "few examples:\n34/44 = 1\n41/32 = 9\n34|25 = 69\nNow, determine the result for: 69/52")
    symbolic = ("In Alice's Wonderland, a secret set of transformation rules is applied to equations. Below are a "
                "few examples:\n#]+\\# = \"!\n#^-{] = ]#\n\\{*\\! = #\\^:\nNow, determine the result for: #!-\"^")
    ref = measure_reference([categories.parse(numeric), categories.parse(symbolic), categories.parse(numeric)])
    assert sorted(d["family"] for d in ref.profiles["equations"]) == ["numeric", "numeric", "symbolic"]
    assert all(d["n_examples"] == 3 for d in ref.profiles["equations"])
    assert ref.shares["equations"] == 1.0 and ref.shares["cipher"] == 0.0


def test_deadline_writes_a_short_mix_and_saves_no_partial_shard(tmp_path):
    out = tmp_path / "t.jsonl"
    s = build_mix(MixConfig(n=3000, out=str(out), categories=("cipher",), workers=1, shard_size=1000,
                            max_minutes=0.3 / 60, progress=False, keep_shards=True))
    assert s["rows"] < 3000 and s["short"]["cipher"] == 3000 - s["rows"]
    assert len(read_jsonl(out, strict=True)) == s["rows"] and s["funnel"]["cipher"]["deadline"] >= 1
    # Only whole shards are saved for resume; the one the deadline cut is redone.
    saved = list((tmp_path / "t.jsonl.shards").glob("cipher-*[0-9].jsonl"))
    assert all(len(read_jsonl(f, strict=True)) == 1000 for f in saved) and len(saved) < 3


def _write_ref(path, prompts):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "answer"])
        for i, (prompt, answer) in enumerate(prompts):
            w.writerow([f"r{i}", prompt, answer])


def test_equations_family_split_follows_the_reference(tmp_path):
    # The solver keeps numeric puzzles about twice as often as symbolic ones; the mix must still carry the
    # reference's 1 : 3 split (each family is its own quota cell), not drift toward the easy family.
    rng = random.Random(4)
    ref = [categories.generate("equations", rng, {"family": fam, "n_examples": 4, "query_seen": 1.0})
           for fam in ["numeric"] * 3 + ["symbolic"] * 9]
    _write_ref(tmp_path / "ref.csv", [(p.prompt, p.answer) for p in ref])
    s = build_mix(MixConfig(n=40, out=str(tmp_path / "e.jsonl"), like=str(tmp_path / "ref.csv"),
                            categories=("equations",), workers=1, shard_size=20, progress=False))
    rows = read_jsonl(tmp_path / "e.jsonl", strict=True)
    families = collections.Counter(r["features"]["family"] for r in rows)
    assert families == {"numeric": 10, "symbolic": 30} and s["short"] == {}
    assert s["strata"] == {"equations/numeric/4": {"quota": 10, "kept": 10},
                           "equations/symbolic/4": {"quota": 30, "kept": 30}}
    assert all(r["status"] == "deduced" and r["features"]["n_examples"] == 4 for r in rows)
    assert s["funnel"]["equations"]["abstained"] > 0  # guesses are dropped (as abstentions: deduce_only)


def test_guessed_rows_only_where_allowed_and_only_when_exact():
    # An unseen operator: the equations solver can only guess. Deduced-only statuses: it abstains fast;
    # with guesses allowed the row is kept when the guess is exactly the generator's answer, else "wrong".
    rng = random.Random(2)
    outcomes = {("deduced",): collections.Counter(), ("deduced", "guessed"): collections.Counter()}
    for _ in range(30):
        p = categories.generate("equations", rng, {"family": "numeric", "n_ops": 2, "query_seen": 0.0})
        if p.features["query_seen"]:
            continue
        for statuses, counter in outcomes.items():
            row, why, _ = mix.make_row(p, statuses)
            counter[why] += 1
            assert (row is not None) == (why == "kept")
            if row is not None:
                assert row["status"] == "guessed" and row["answer"] == p.answer
    assert set(outcomes[("deduced",)]) == {"abstained"}
    assert outcomes[("deduced", "guessed")]["kept"] > 0
    assert set(outcomes[("deduced", "guessed")]) <= {"kept", "wrong_guessed"}


def test_keep_guessed_per_category(tmp_path):
    s = build_mix(MixConfig(n=200, out=str(tmp_path / "g.jsonl"), categories=("unit_conversion", "gravity"),
                            keep_guessed=("unit_conversion",), workers=1, shard_size=50, progress=False))
    rows = read_jsonl(tmp_path / "g.jsonl", strict=True)
    status = {c: collections.Counter(r["status"] for r in rows if r["category"] == c) for c in s["quotas"]}
    assert status["unit_conversion"]["guessed"] > 10 and set(status["gravity"]) == {"deduced"}
    assert s["statuses"] == {c: dict(v) for c, v in status.items()}
    assert "dropped_guessed" not in s["funnel"]["unit_conversion"]
    assert s["funnel"]["gravity"]["dropped_guessed"] > 0
    for r in rows:  # a kept guess is exactly the generator's answer, and its trace ends on it
        assert check_sft_row(r) is None and r["completion"].endswith(f"\\boxed{{{r['answer']}}}")


def test_rows_the_official_metric_would_not_read_are_dropped_and_counted(tmp_path, monkeypatch):
    # A trace writer that boxes a wrong number AFTER the answer line: the metric reads that box instead.
    real = mix.completion
    monkeypatch.setattr(mix, "completion", lambda text, answer: real(text, answer) + " \\boxed{-1}")
    s = build_mix(MixConfig(n=5, out=str(tmp_path / "m.jsonl"), categories=("numeral_system",), workers=1,
                            shard_size=5, max_attempts=3, max_rounds=1, progress=False))
    assert s["rows"] == 0 and s["funnel"]["numeral_system"]["metric_fail"] >= 5
    monkeypatch.setattr(mix, "completion", real)
    build_mix(MixConfig(n=5, out=str(tmp_path / "ok.jsonl"), categories=("numeral_system",), workers=1,
                        progress=False))
    assert all(check_sft_row(r) is None for r in read_jsonl(tmp_path / "ok.jsonl", strict=True))


def test_drill_share_and_category_shares(tmp_path):
    s = build_mix(MixConfig(n=40, out=str(tmp_path / "d.jsonl"), categories=("numeral_system", "cipher"),
                            workers=1, progress=False, drill_share=0.25, shares={"cipher": 3.0}))
    rows = read_jsonl(tmp_path / "d.jsonl", strict=True)
    drills = [r for r in rows if r["features"].get("drill")]
    assert len(drills) == 10 and s["drills"]["rows"] == 10 and 0 < s["drills"]["token_share"] < 1
    assert all(check_sft_row(r) is None and r["completion"].endswith("}") for r in drills)
    # the cipher word list, one row a length, and the cryptarithm catalog for the rest
    assert collections.Counter(r["category"] for r in drills) == {"cipher": 9, "equations": 1}
    assert "The 6-letter words are " in next(r["completion"] for r in drills if "6 letters" in r["prompt"])
    assert s["quotas"] == {"numeral_system": 8, "cipher": 22}  # 30 puzzle rows split 1 : 3
    with pytest.raises(ValueError, match="unknown categories"):
        build_mix(MixConfig(n=10, out=str(tmp_path / "x.jsonl"), shares={"bogus": 1.0}, progress=False))
