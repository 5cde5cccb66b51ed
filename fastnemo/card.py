"""The GPU as fastnemo sizes it. ``FASTNEMO_GPU_CAP_GIB`` makes a bigger card play a smaller one (the GPU test
lane's H200 plays the user's 80 GB H100, 79.2 GiB as torch reports it): the training process is capped by
torch's per-process memory fraction, and vLLM's ``gpu_memory_utilization`` is rescaled to the physical card
(``fastnemo.harness.memory_share``). Below every module that touches the GPU; imports nothing of fastnemo."""

from __future__ import annotations

import os

CAP_ENV = "FASTNEMO_GPU_CAP_GIB"


def cap_gib() -> float | None:
    """The GiB the card counts as, or None when uncapped."""
    cap = os.environ.get(CAP_ENV)
    return float(cap) if cap else None


def cap_memory() -> None:
    """Cap this process's CUDA allocations at ``cap_gib()`` (no-op without the variable or a GPU)."""
    import torch

    cap = cap_gib()
    if cap and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
