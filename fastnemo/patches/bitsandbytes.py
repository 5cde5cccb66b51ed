"""Patches of bitsandbytes' private state (written against bitsandbytes 0.50.2, the version the GPU lane ran).

- ``forget_module_overrides``: with ``lora.optimizer_8bit`` the Trainer builds a bitsandbytes 8-bit AdamW and
  registers every ``nn.Embedding`` of the model with bitsandbytes' process-wide ``GlobalOptimManager``
  (``register_module_override``: "optimize in 32 bits"). The manager keeps those modules in a list forever,
  so a released model's embedding stays on the GPU. Worse, transformers' loader carves every weight out of
  one cudaMalloc segment the size of the model (``caching_allocator_warmup``), and the caching allocator
  returns a segment only when all of it is free: that one 0.7 GB embedding kept the whole 60 GiB segment
  (found on the GPU lane, 2026-12-07: vLLM saw 17 of 79 GiB free after the release). The overrides are
  forgotten when the model is released; the embedding is frozen under LoRA, so the override never mattered.
"""

from __future__ import annotations

import bitsandbytes
from bitsandbytes.optim import GlobalOptimManager

from fastnemo.patches import require

WRITTEN_AGAINST = "0.50.2"
require("bitsandbytes", bitsandbytes.__version__, WRITTEN_AGAINST, accepts="0.50", module=__name__)

# What the patch below depends on (tests/fastnemo/test_patches.py pins their source): the manager's fields
RELIES_ON = (
    "bitsandbytes.optim.optimizer.GlobalOptimManager.initialize",  # the reset: every field back to empty
    "bitsandbytes.optim.optimizer.GlobalOptimManager.register_module_override",  # what appends the modules
)


def forget_module_overrides() -> int:
    """Drop every module and parameter bitsandbytes' global manager still holds (its own ``initialize``: the
    per-parameter configs go too, keyed by ids that a reloaded model's parameters may reuse); returns how many
    modules it held."""
    manager = GlobalOptimManager.get_instance()
    held = len(manager.module_weight_config_triple)
    manager.initialize()
    return held
