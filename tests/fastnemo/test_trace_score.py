"""Teacher-forced trace scores on the tiny model: the numbers are the model's own, batching changes nothing."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from click.testing import CliRunner

from fastnemo import trace_score
from fastnemo.cli import main
from puzzles import categories
from puzzles.analyze import solve_traced


def _rows(n=3):
    rows, seed = [], 0
    cats = ["numeral_system", "cipher", "unit_conversion"]
    while len(rows) < n:
        _, row = solve_traced(categories.generate(cats[len(rows) % 3], random.Random(seed)))
        seed += 1
        if row is not None:
            rows.append(row)
    return rows


def test_logprobs_match_the_models_own_loss_and_do_not_depend_on_the_batch(tiny_session):
    rows = _rows(3)
    together = trace_score.score_rows(tiny_session, rows, batch_size=3)
    alone = [trace_score.score_batch(tiny_session, [r])[0] for r in rows]
    for a, b in zip(together, alone, strict=True):
        assert a["tokens"] == b["tokens"] == len(a["logp"])
        assert max(abs(x - y) for x, y in zip(a["logp"], b["logp"], strict=True)) < 1e-4
        assert a["first_divergence"] == b["first_divergence"]
    # the mean completion log-prob is minus the model's cross-entropy on the completion tokens
    prompt, comp, _ = trace_score._encode(tiny_session, rows[0])
    ids = torch.tensor([prompt + comp])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    with torch.no_grad():
        loss = tiny_session.model(input_ids=ids, labels=labels).loss.item()
    assert math.isclose(-sum(alone[0]["logp"]) / len(comp), loss, rel_tol=1e-4)


def test_summary_per_category(tiny_session):
    s = trace_score.summarize(trace_score.score_rows(tiny_session, _rows(3), batch_size=2))
    assert set(s) == {"numeral_system", "cipher", "unit_conversion", "all"}
    a = s["all"]
    assert a["rows"] == 3 and a["min_logp"] <= a["mean_logp"] < 0
    assert 0.0 <= a["share_below_ln2"] <= 1.0
    w = a["weakest_lines"]
    assert w and w == sorted(w, key=lambda x: x["mean_logp"]) and all("text" in x for x in w)


def test_cli_scores_and_names_bad_input(tiny_model_dir, tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    r = CliRunner().invoke(main, ["traces", "score", "--model", str(tiny_model_dir), str(path),
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "trace_scores.json").read_text())["all"]["rows"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + json.dumps({**_rows(1)[0], "completion": "no final line"}) + "\n")
    r = CliRunner().invoke(main, ["traces", "score", "--model", str(tiny_model_dir), str(bad), "--out",
                                  str(tmp_path / "o2")])
    assert r.exit_code != 0 and "row 3" in r.output and "bad.jsonl" in r.output
    assert not (tmp_path / "o2").exists()
    empty = tmp_path / "nomodel"
    empty.mkdir()
    r = CliRunner().invoke(main, ["traces", "score", "--model", str(empty), str(path)])
    assert r.exit_code != 0 and "cannot load model" in r.output and "nomodel" in r.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_width_slice_on_gpu(tmp_path):
    """The GPU lane: a real-width random slice of Nemotron-3-Nano in bf16, scored in batches of 4 and alone."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.common import build_slice_model
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig
    from fastnemo.session import ModelSession

    path = build_slice_model(tmp_path / "slice", ["linear_attention", "moe", "full_attention"])
    session = ModelSession.load(path, ModelConfig(path=str(path)), LoraConfig(rank=8, alpha=8),
                                GenerationConfig(engine="hf"))
    rows = _rows(4)
    together = trace_score.score_rows(session, rows, batch_size=4)
    alone = [trace_score.score_batch(session, [r])[0] for r in rows]
    for a, b in zip(together, alone, strict=True):
        mean_a, mean_b = sum(a["logp"]) / a["tokens"], sum(b["logp"]) / b["tokens"]
        assert abs(mean_a - mean_b) < 0.05  # bf16 kernels differ a little between batch shapes
    s = trace_score.summarize(together)
    assert s["all"]["rows"] == 4 and s["all"]["min_logp"] < s["all"]["mean_logp"] < 0
