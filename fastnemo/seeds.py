"""Every seed of a run, derived from the recipe's one ``seed``: the streams in one table, so that two purposes
never share a stream by accident and a resumed run derives the same numbers as an uninterrupted one.

``derive_seed(base, purpose, round)`` = ``base + offset + step * round`` by ``STREAMS[purpose]``;
``call_seed(seed, index)`` is the seed of one engine call (or one harness request) of a sampling loop.
"""

from __future__ import annotations

# purpose -> (offset, step per round). The numbers are the ones runs have always used: changing one changes
# the data and the training of every recipe.
STREAMS: dict[str, tuple[int, int]] = {
    "mix": (0, 1000),  # the data stage's solver-trace mix (puzzles.mix derives its shards' streams from it)
    "mix_next": (0, 1),  # the next round's SFT set: distilled traces + carried rows
    "recall": (0, 1),  # the order of the recall drills' exposures
    "distill": (0, 1),  # the distill stage's generated prompts and its sampling
    "grpo": (0, 1),  # DAPO's generated prompts, rollouts and refills
    "grpo_top_up": (7919, 0),  # from DAPO's seed: puzzles that top up a short Goldilocks set (ids apart from distill's)
    "heldout": (10_000_019, 0),  # the generated validation set: apart from every training seed, the same each round
}
CALL_STRIDE = 1_000_003  # a prime above any loop's call count: the calls of two loop seeds never meet


def derive_seed(base: int, purpose: str, round: int = 0) -> int:
    """The seed of ``purpose`` in ``round`` of a run whose recipe seed is ``base``."""
    offset, step = STREAMS[purpose]
    return base + offset + step * round


def call_seed(seed: int, index: int) -> int:
    """The sampling seed of call (or request) ``index`` of a loop seeded ``seed``: a resume, or a shard of the
    loop, samples each call as the uninterrupted loop does."""
    return seed * CALL_STRIDE + index
