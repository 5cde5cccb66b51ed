"""Token-budget batching: every row once per epoch, batches within the budget, length-grouped (less padding
than fixed batches), and a real SFT run on the tiny model trains through it."""

from __future__ import annotations

import math
import random

import pytest

from fastnemo.batching import TokenBudgetSampler, token_budget_batches


def _lengths(n=500, seed=0):
    rng = random.Random(seed)
    return [rng.randint(200, 3000) for _ in range(n)]


def test_every_row_once_and_within_budget():
    lengths = _lengths() + [9000]  # one row over the budget: a batch of its own
    batches = token_budget_batches(lengths, 8192, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 8192, b
    assert [len(lengths) - 1] in batches


def test_length_grouping_pads_less_than_fixed_batches():
    lengths = _lengths()
    grouped = token_budget_batches(lengths, 8192, seed=0)
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    avg = sum(len(b) for b in grouped) / len(grouped)
    fixed = [order[i : i + round(avg)] for i in range(0, len(order), round(avg))]

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.5 * padding(fixed), (padding(grouped), padding(fixed))
    assert avg > 3  # ~1,600-token rows under an 8k budget: several rows a batch, not batch = 1


def test_sampler_reshuffles_per_epoch_and_rejects_a_bad_budget():
    s = TokenBudgetSampler(_lengths(), 8192, seed=0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    with pytest.raises(ValueError, match="token_budget"):
        token_budget_batches([10], 0)


def test_sft_trains_with_a_token_budget(tiny_session, tmp_path):
    from fastnemo import sft
    from fastnemo.config import SFTConfig

    rows = [
        {"prompt": f"In Alice's Wonderland, {i} -> {2 * i}. Now {i + 1}?",
         "completion": "Each number is doubled." * (1 + i % 5) + f"</think>\n\\boxed{{{2 * i + 2}}}"}
        for i in range(24)
    ]
    cfg = SFTConfig(learning_rate=1e-2, max_steps=4, batch_size=1, grad_accum=1, max_length=256, warmup=0.0,
                    save_steps=100, logging_steps=1, token_budget=600)
    logs = []
    summary = sft.train(tiny_session, rows, cfg, tmp_path / "ckpt", log=logs.append)
    assert summary["steps"] == 4
    losses = [r["loss"] for r in logs if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)  # trained through the budget sampler
