"""Reward functions on the edge cases a policy produces: no box, two boxes, nested braces, truncation."""

from __future__ import annotations

import pytest

from fastnemo import rewards
from fastnemo.config import GRPOConfig


def call(func, completions, answers, **kw):
    return func(prompts=["p"] * len(completions), completions=completions, answer=answers, **kw)


def test_correctness_edge_cases():
    cases = [
        ("think\n</think>\n\\boxed{42}", "42", 1.0),
        ("think\n</think>\n\\boxed{ 42 }  \n", "42", 1.0),  # whitespace inside and after the box
        ("think\n</think>\nthe answer is 42", "42", 1.0),  # the metric's fallback still scores it
        ("think\n</think>\nno answer here", "42", 0.0),
        ("</think>\\boxed{41} then \\boxed{42}", "42", 1.0),  # last box wins, as in the metric
        ("</think>\\boxed{42} then \\boxed{41}", "42", 0.0),
        ("</think>\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 0.0),  # the official box stops at the first }
        ("r\n</think>\nFinal answer: a}b", "a}b", 1.0),  # a }-answer scores only through the final line
        ("</think>\\boxed{43}", "42", 0.0),  # strict: no 1 % tolerance for integers
        ("</think>\\boxed{12.34}", "12.35", 1.0),  # decimals keep the tolerance
        ("</think>\\boxed{10011", "10011010", 0.0),  # truncated mid-box: read as 10011, a wrong bit string
        ("", "42", 0.0),
    ]
    got = call(rewards.correctness, [c for c, _, _ in cases], [a for _, a, _ in cases])
    assert got == [want for _, _, want in cases]


def test_format_reward():
    good = "reasoning\n</think>\n\\boxed{XIV}"
    bad = [
        "reasoning \\boxed{XIV}",  # no closing think tag
        "reasoning\n</think>\nXIV",  # no box
        "reasoning\n</think>\n\\boxed{XIV} or \\boxed{XV}",  # two boxes
        "try \\boxed{XV}\n</think>\n\\boxed{XIV}",  # a box inside the reasoning
        "a</think>b</think>\\boxed{XIV}",  # closed twice
        "reasoning\n</think>\n\\boxed{ }",  # empty box
        "reasoning\n</think>\n\\boxed{XI",  # truncated inside the box
    ]
    assert call(rewards.format_reward, [good] + bad, [""] * 8) == [1.0] + [0.0] * len(bad)
    assert rewards.well_formatted("r\n</think>\nFinal answer: a}b")  # the only readable form of a }-answer
    assert not rewards.well_formatted("r \\boxed{x}\n</think>\nFinal answer: a}b")  # the box would win
    assert not rewards.well_formatted("r\n</think>\nFinal answer: ")


def test_cosine_scaling_orders_lengths():
    f = rewards.make_cosine_correctness(max_len=100)
    right, wrong = "</think>\\boxed{7}", "</think>\\boxed{8}"
    r = call(f, [right, right, right, wrong, wrong], ["7"] * 5,
             completion_ids=[[0] * 0, [0] * 50, [0] * 100, [0] * 0, [0] * 100])
    assert r[0] == pytest.approx(1.0) and r[2] == pytest.approx(0.5) and r[0] > r[1] > r[2]
    assert r[3] == pytest.approx(-1.0) and r[4] == pytest.approx(-0.5)
    assert min(r[:3]) > max(r[3:])  # any correct answer beats any wrong one
    assert rewards.cosine_scaled(True, 10_000, 100) == pytest.approx(0.5)  # beyond max_len: clamped


def test_group_length_penalty():
    f = rewards.make_group_length_penalty(group_size=3)
    comps = ["</think>\\boxed{1}", "</think>\\boxed{1}", "</think>\\boxed{2}"] * 2
    ids = [[0] * 10, [0] * 30, [0] * 20] + [[0] * 5] * 3
    r = call(f, comps, ["1"] * 6, completion_ids=ids)
    # group 1: lengths 10/30/20 -> lam 0.5/-0.5/0.0; the wrong one gets min(0, lam)
    assert r[:3] == pytest.approx([0.5, -0.5, 0.0])
    assert r[3:] == [0.0, 0.0, 0.0]  # equal lengths: no length signal
    with pytest.raises(ValueError):
        call(f, comps[:4], ["1"] * 4, completion_ids=ids[:4])


def test_soft_overlong_penalty():
    f = rewards.make_soft_overlong_penalty(max_len=100, cache=20, eos_token_ids=[9])
    ids = [[1] * 50 + [9], [1] * 89 + [9], [1] * 99 + [9], [1] * 100]
    r = call(f, ["x"] * 4, [""] * 4, completion_ids=ids)
    assert r[0] == 0.0
    assert r[1] == pytest.approx(-0.5)  # 90 tokens: half way through the 20-token buffer
    assert r[2] == -1.0  # reached max_len
    assert r[3] == -1.0  # truncated (no end of turn)


def test_reward_funcs_follow_config():
    funcs, weights = rewards.reward_funcs(GRPOConfig())
    assert [f.__name__ for f in funcs] == ["correctness"] and weights == [1.0]
    cfg = GRPOConfig(format_reward=0.2, length_reward="cosine", overlong="penalty")
    funcs, weights = rewards.reward_funcs(cfg)
    assert [f.__name__ for f in funcs] == ["cosine_correctness", "format_reward", "soft_overlong_penalty"]
    assert weights == [1.0, 0.2, 1.0]
    funcs, _ = rewards.reward_funcs(GRPOConfig(length_reward="penalty"))
    assert [f.__name__ for f in funcs] == ["correctness", "group_length_penalty"]
