"""Reward functions for DAPO, in the form TRL's ``GRPOTrainer`` calls them.

Every function here is ``reward(prompts, completions, **kwargs) -> list[float]``, one reward per completion;
TRL passes the dataset's other columns as keyword lists (``answer`` is the one we need) and the sampled
token ids as ``completion_ids``. Completions are the model's text after the opening ``<think>\\n`` (the
trainer decodes them with special tokens kept, so ``</think>`` is visible).

- ``correctness``: 1/0 by the competition metric in strict mode (``puzzles.metric``): the number the
  leaderboard counts, minus the 1 % tolerance for integers and bit strings.
- ``format_reward``: 1 when the reasoning is closed exactly once and exactly one non-empty ``\\boxed{}``
  follows it: the shape the harness parses best.
- ``cosine_correctness`` (length_reward = "cosine"): correctness scaled by length on a cosine schedule, as in
  "Demystifying Long Chain-of-Thought Reasoning in LLMs" (Yeo et al., 2025) and its open-r1 implementation
  that Fast-Math-R1 trained with: a correct answer earns 1.0 at length 0 down to 0.5 at ``max_len``; a wrong
  one -1.0 at length 0 up to -0.5 at ``max_len`` (short wrong answers are punished most: think longer when
  unsure, shorter when sure). It replaces ``correctness``.
- ``group_length_penalty`` (length_reward = "penalty"): Kimi k1.5's length reward, relative to the group
  of completions of one prompt: lam = 0.5 - (len - min) / (max - min); correct answers get lam, wrong ones
  min(0, lam). Pushes toward the shortest correct reasoning the policy already produces.
- ``soft_overlong_penalty`` (overlong = "penalty"): DAPO's soft overlong punishment: 0 up to
  ``max_len - cache``, then linearly down to -1 at ``max_len`` (and -1 for a truncated completion).

``reward_funcs(cfg)`` picks the functions and their weights from a ``GRPOConfig``.
"""

from __future__ import annotations

import math
import re

from puzzles.metric import score
from puzzles.traces import FINAL_PREFIX, THINK_CLOSE


def _lengths(completions: list[str], completion_ids) -> list[int]:
    """Token counts when TRL passed the ids, else a character-based stand-in (tests, other callers)."""
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(c) for c in completions]


def correctness(prompts, completions, answer, **kwargs) -> list[float]:
    return [1.0 if score(c, a, strict=True) else 0.0 for c, a in zip(completions, answer, strict=True)]


def well_formatted(text: str) -> bool:
    """Reasoning closed exactly once, then one answer the official metric reads cleanly: exactly one
    complete, non-empty box and nothing boxed before; or (the only readable form of an answer containing
    ``}``) no box anywhere and a non-empty ``Final answer:`` line."""
    if text.count(THINK_CLOSE) != 1:
        return False
    reasoning, final = text.split(THINK_CLOSE)
    if "\\boxed{" not in text:
        line = final.strip()
        return line.startswith(FINAL_PREFIX.strip()) and line[len(FINAL_PREFIX.strip()):].strip() != ""
    if "\\boxed{" in reasoning or final.count("\\boxed{") != 1:
        return False
    closed = re.search(r"\\boxed\{([^}]*)\}", final)
    return closed is not None and closed.group(1).strip() != ""


def format_reward(prompts, completions, **kwargs) -> list[float]:
    return [1.0 if well_formatted(c) else 0.0 for c in completions]


def cosine_scaled(correct: bool, length: int, max_len: int) -> float:
    """open-r1's cosine schedule: value at length 0 -> value at max_len, half a cosine in between."""
    at_zero, at_max = (1.0, 0.5) if correct else (-1.0, -0.5)
    progress = min(length, max_len) / max_len
    return at_max + 0.5 * (at_zero - at_max) * (1.0 + math.cos(progress * math.pi))


def make_cosine_correctness(max_len: int):
    def cosine_correctness(prompts, completions, answer, completion_ids=None, **kwargs) -> list[float]:
        lengths = _lengths(completions, completion_ids)
        return [
            cosine_scaled(score(c, a, strict=True), n, max_len)
            for c, a, n in zip(completions, answer, lengths, strict=True)
        ]

    return cosine_correctness


def make_group_length_penalty(group_size: int):
    """Kimi k1.5 length reward. TRL hands a reward function whole groups, consecutive, ``group_size`` each."""

    def group_length_penalty(prompts, completions, answer, completion_ids=None, **kwargs) -> list[float]:
        lengths = _lengths(completions, completion_ids)
        if len(lengths) % group_size:
            raise ValueError(f"group_length_penalty: {len(lengths)} completions are not groups of {group_size}")
        out = []
        for g in range(0, len(lengths), group_size):
            lo, hi = min(lengths[g : g + group_size]), max(lengths[g : g + group_size])
            for i in range(g, g + group_size):
                lam = 0.0 if hi == lo else 0.5 - (lengths[i] - lo) / (hi - lo)
                out.append(lam if score(completions[i], answer[i], strict=True) else min(0.0, lam))
        return out

    return group_length_penalty


def soft_overlong(length: int, max_len: int, cache: int, truncated: bool = False) -> float:
    if truncated or length >= max_len:
        return -1.0
    start = max_len - cache
    return 0.0 if length <= start else (start - length) / cache


def make_soft_overlong_penalty(max_len: int, cache: int | None = None, eos_token_ids=()):
    """``cache`` defaults to a fifth of ``max_len`` (DAPO: 4k of 20k). A completion whose last token is not
    an end-of-turn id was truncated (only checked when ids and ``eos_token_ids`` are given)."""
    cache = cache or max(1, max_len // 5)
    eos = set(eos_token_ids)

    def soft_overlong_penalty(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        lengths = _lengths(completions, completion_ids)
        cut = [bool(eos) and completion_ids is not None and (not ids or ids[-1] not in eos)
               for ids in (completion_ids or [None] * len(completions))]
        return [soft_overlong(n, max_len, cache, t) for n, t in zip(lengths, cut, strict=True)]

    return soft_overlong_penalty


def reward_funcs(cfg, eos_token_ids=()) -> tuple[list, list[float]]:
    """The reward functions a ``GRPOConfig`` asks for, and their weights (TRL sums weighted rewards)."""
    funcs, weights = [], []
    if cfg.length_reward == "cosine":
        funcs.append(make_cosine_correctness(cfg.max_tokens))
    else:
        funcs.append(correctness)
    weights.append(1.0)
    if cfg.format_reward:
        funcs.append(format_reward)
        weights.append(float(cfg.format_reward))
    if cfg.length_reward == "penalty":
        funcs.append(make_group_length_penalty(cfg.group_size))
        weights.append(1.0)
    if cfg.overlong == "penalty":
        funcs.append(make_soft_overlong_penalty(cfg.max_tokens, eos_token_ids=eos_token_ids))
        weights.append(1.0)
    return funcs, weights
