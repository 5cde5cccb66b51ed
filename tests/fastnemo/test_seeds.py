"""fastnemo.seeds: the derived seeds are the numbers runs have always used (changing one would change the data
and the training of every recipe, and a resumed run would no longer match its first part)."""

from __future__ import annotations

import pytest

from fastnemo.seeds import STREAMS, call_seed, derive_seed


@pytest.mark.parametrize("base", [0, 5, 2**32 - 1])
@pytest.mark.parametrize("rnd", [1, 2, 7])
def test_derived_seeds_are_the_historic_formulas(base, rnd):
    assert derive_seed(base, "mix", rnd) == base + 1000 * rnd
    for purpose in ("mix_next", "recall", "distill", "grpo"):
        assert derive_seed(base, purpose, rnd) == base + rnd
    assert derive_seed(base, "heldout") == derive_seed(base, "heldout", rnd) == 10_000_019 + base
    assert derive_seed(base, "grpo_top_up") == base + 7919
    assert call_seed(base, rnd) == base * 1_000_003 + rnd


def test_an_unknown_purpose_is_refused():
    with pytest.raises(KeyError):
        derive_seed(0, "nonsense")
    assert set(STREAMS) >= {"mix", "mix_next", "recall", "distill", "grpo", "heldout"}
