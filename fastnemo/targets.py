"""Which modules of nemotron_h a fastnemo LoRA may adapt, and the checks that need no model (no torch here:
``fastnemo.config`` reads a recipe with these, ``fastnemo.lora`` trains them, ``fastnemo.pack`` checks an
adapter's keys against them)."""

from __future__ import annotations

import re

MAX_LORA_RANK = 32  # the competition loads adapters with max_lora_rank 32

# What vLLM applies of a nemotron_h LoRA (field notes); names are module-name suffixes. lm_head trains
# through TRL's fused head and the Mamba out_proj past the fused kernel (fastnemo.lora;
# tests/fastnemo/test_lora.py checks every one of them trains).
SERVABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj", "up_proj", "down_proj", "lm_head")
# The winners' module set (field notes): every module vLLM serves, the recipe default (lora.target_modules).
# The routed experts are a separate switch (lora.train_experts): by `fastnemo plan` they do not fit one 80 GB
# card at 1 x 8,192 tokens (see config.LoraConfig.train_experts).
DEFAULT_TARGETS = SERVABLE
# The same set with the routed experts on (train_experts)
FULL_TARGETS = SERVABLE
# The routed experts' fused 3-D parameters (PEFT target_parameters)
EXPERT_PARAMETERS = ("experts.up_proj", "experts.down_proj")
# What plain PEFT + TRL can train on nemotron_h (PEFT refuses out_proj; TRL refuses lm_head): the baselines'
# set in bench/ and the one the plan's memory measurements were taken on.
PLAIN_PEFT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj")
# Left out on purpose, each with why
REFUSED = {
    "conv1d": "vLLM does not apply a LoRA on the Mamba conv1d",
    "gate": "the router (mixer.gate) is ignored by vLLM",
    "embed_tokens": "an embedding LoRA is not trained by fastnemo (TRL's fused head never reads it)",
}

# Every module path vLLM applies a LoRA on for nemotron_h (an adapter key's part between the PEFT prefix and
# .lora_A/B.weight): SERVABLE spelled out per layer, the shared and the routed experts included.
MODULE = re.compile(
    r"backbone\.layers\.(\d+)\.mixer\.(q_proj|k_proj|v_proj|o_proj|in_proj|out_proj"
    r"|shared_experts\.(?:up_proj|down_proj)|experts\.(\d+)\.(?:up_proj|down_proj))"
    r"|lm_head|backbone\.embeddings"
)


def check_lora(targets: list[str], rank: int, where: str = "lora") -> None:
    """Checks that need no model: every target servable by vLLM, rank <= 32. Raises ValueError naming the key."""
    if not 1 <= rank <= MAX_LORA_RANK:
        raise ValueError(f"{where}.rank: {rank} is outside 1..{MAX_LORA_RANK} (vLLM's max_lora_rank); lower it")
    for t in targets:
        if t in REFUSED:
            raise ValueError(f"{where}.target_modules: {t!r}: {REFUSED[t]}; remove it")
        if t not in SERVABLE:
            raise ValueError(f"{where}.target_modules: {t!r} is not a module vLLM serves for nemotron_h "
                             f"(available: {list(SERVABLE)})")
