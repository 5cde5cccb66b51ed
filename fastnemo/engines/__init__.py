"""Generation engines behind one interface, each bound to the session's one loaded model.

An engine turns chat-rendered prompts into completions. ``sync_weights`` makes it use the LoRA weights as
the trainer left them; ``sleep``/``wake`` hand its memory back to training between phases. The ``hf``
engine generates with the training model itself, so for it those three are no-ops.
"""

from __future__ import annotations

from typing import Protocol

from fastnemo.config import SamplingConfig


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
