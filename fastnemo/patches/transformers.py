"""Patches of transformers' private code (written against transformers 5.17.0, the version pyproject.toml
pins).

- ``wrap_mamba_fused_kernel``: nemotron_h's Mamba mixer hands ``out_proj.weight`` to the fused
  ``mamba2_split_conv1d_scan_combined`` kernel (a module-level name of ``modeling_nemotron_h``), which then
  skips the module and any LoRA on it; ``fastnemo.lora`` wraps that name so the module applies it.
- ``grouped_linear``: transformers' private grouped GEMM over expert groups (with its CPU fallback), which
  ``fastnemo.lora``'s grouped expert LoRA calls.
"""

from __future__ import annotations

import transformers
from transformers.integrations.moe import _grouped_linear as grouped_linear  # noqa: F401  (used by lora)
from transformers.models.nemotron_h import modeling_nemotron_h

from fastnemo.patches import require, wrap_once

WRITTEN_AGAINST = "5.17.0"
require("transformers", transformers.__version__, WRITTEN_AGAINST, accepts=WRITTEN_AGAINST, module=__name__)

# What the patches below replace or depend on (tests/fastnemo/test_patches.py pins their source)
RELIES_ON = (
    "transformers.models.nemotron_h.modeling_nemotron_h.mamba2_split_conv1d_scan_combined",
    "transformers.models.nemotron_h.modeling_nemotron_h.NemotronHMamba2Mixer.forward",  # its one caller
    "transformers.integrations.moe._grouped_linear",
)


def wrap_mamba_fused_kernel(wrap) -> None:
    """Replace nemotron_h's fused Mamba kernel ``f`` by ``wrap(f)``, once per process."""
    wrap_once(modeling_nemotron_h, "mamba2_split_conv1d_scan_combined", wrap)
