"""Generation engines behind one interface, each bound to the session's one loaded model.

An engine turns chat-rendered prompts into completions. ``sync_weights`` makes it use the LoRA weights as
the trainer left them; ``sleep``/``wake`` hand its memory back to training between phases. The ``hf``
engine generates with the training model itself, so for it those three are no-ops.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

from fastnemo.config import SamplingConfig

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_tokens: truncated)
    token_ids: list[int] | None = None  # the sampled tokens, where the engine reports them (RL needs them exact)


def resolve_dtype(name: str) -> torch.dtype:
    """model.dtype -> the torch dtype the trainer and the engines load in ("auto": bf16 on CUDA, else fp32)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


class Engine(Protocol):
    def generate(self, chat_prompts: list[str], sampling: SamplingConfig) -> list[list]: ...

    def sync_weights(self) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


def make_engine(name: str, session) -> Engine:
    if name == "hf":
        from fastnemo.engines.hf import HFEngine

        return HFEngine(session)
    if name == "vllm":
        from fastnemo.engines.vllm import VLLMEngine

        return VLLMEngine(session, session.gen_cfg, weight_sync=session.gen_cfg.weight_sync)
    raise ValueError(f"generation.engine: unknown engine {name!r} (expected 'hf' or 'vllm')")
