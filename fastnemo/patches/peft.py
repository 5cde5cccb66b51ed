"""Patches of PEFT's private code (written against PEFT 0.21.2; the GPU lane ran 0.21.0, the same code).

- ``allow_out_proj``: PEFT refuses a LoRA on a Mamba ``out_proj`` (``_check_lora_target_modules_mamba``)
  because the fused kernel reads its weight directly; ``fastnemo.lora`` routes the kernel around that, so
  the refusal is lifted for ``out_proj`` alone (``conv1d`` stays refused).
- ``replace_expert_forward``: PEFT's ``ParamWrapper.forward`` folds ``W + dW`` for every expert on every
  forward; ``fastnemo.lora.grouped_expert_forward`` replaces it on nemotron_h's expert blocks. It reads the
  stacked factors in PEFT's layout (``ParamWrapper.get_delta_factors``: A (E*r, in), B (out, E*r)).
"""

from __future__ import annotations

import contextlib

import peft
from peft.tuners import tuners_utils
from peft.tuners.lora.layer import ParamWrapper

from fastnemo.patches import require

WRITTEN_AGAINST = "0.21.2"
require("peft", peft.__version__, WRITTEN_AGAINST, accepts="0.21", module=__name__)

# What the patches below replace or depend on (tests/fastnemo/test_patches.py pins their source)
RELIES_ON = (
    "peft.tuners.tuners_utils._check_lora_target_modules_mamba",
    "peft.tuners.lora.layer.ParamWrapper.forward",
    "peft.tuners.lora.layer.ParamWrapper.get_delta_factors",
)


@contextlib.contextmanager
def allow_out_proj():
    """Lift PEFT's Mamba refusal for ``out_proj`` only (conv1d stays refused): ``fastnemo.lora``'s
    ``install_out_proj_lora`` makes the fused kernel leave the projection to the module."""
    original = tuners_utils._check_lora_target_modules_mamba

    def check(peft_config, model, target_name):
        if target_name != "out_proj":
            original(peft_config, model, target_name)

    tuners_utils._check_lora_target_modules_mamba = check
    try:
        yield
    finally:
        tuners_utils._check_lora_target_modules_mamba = original


def replace_expert_forward(model, forward) -> int:
    """Bind ``forward`` as the forward of every experts block whose LoRA PEFT wrapped as a ParamWrapper on
    ``down_proj`` over one on ``up_proj`` (both carry LoRA). Returns how many blocks were patched."""
    n = 0
    for _, module in model.named_modules():
        if (isinstance(module, ParamWrapper) and module.parameter_name == "down_proj"
                and isinstance(module.base_layer, ParamWrapper) and module.base_layer.parameter_name == "up_proj"):
            module.forward = forward.__get__(module)
            n += 1
    return n
