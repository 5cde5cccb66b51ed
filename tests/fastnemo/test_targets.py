"""The LoRA target facts: the checks that need no model, and pack's module pattern agreeing with the names."""

from __future__ import annotations

import re

import pytest

from fastnemo.targets import MAX_LORA_RANK, MODULE, REFUSED, SERVABLE, check_lora

# where each servable name sits in a nemotron_h checkpoint (vLLM's naming)
PATHS = {"lm_head": ["lm_head"], "up_proj": ["backbone.layers.1.mixer.shared_experts.up_proj",
                                             "backbone.layers.1.mixer.experts.7.up_proj"],
         "down_proj": ["backbone.layers.1.mixer.shared_experts.down_proj",
                       "backbone.layers.1.mixer.experts.7.down_proj"]}


@pytest.mark.parametrize("name", SERVABLE)
def test_every_servable_name_is_a_module_pack_accepts(name):
    for path in PATHS.get(name, [f"backbone.layers.3.mixer.{name}"]):
        assert MODULE.fullmatch(path), path


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_names_are_not_servable_and_say_why(name):
    assert name not in SERVABLE
    assert MODULE.fullmatch(f"backbone.layers.3.mixer.{name}") is None
    with pytest.raises(ValueError, match=re.escape(f"lora.target_modules: '{name}': {REFUSED[name]}")):
        check_lora([name], 8)


def test_rank_and_unknown_targets_name_the_key():
    check_lora(list(SERVABLE), MAX_LORA_RANK)
    with pytest.raises(ValueError, match="lora.rank: 33 is outside 1..32"):
        check_lora(["q_proj"], MAX_LORA_RANK + 1)
    with pytest.raises(ValueError, match="grpo.target_modules: 'qproj' is not a module vLLM serves"):
        check_lora(["qproj"], 8, where="grpo")
