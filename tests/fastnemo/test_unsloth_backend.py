"""The unsloth backend's CPU-side logic: its refusal off GPU, and reading a saved adapter's LoRA shape.
(Loading and training through Unsloth run on the H100 test machine: tests/fastnemo/test_gpu.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from fastnemo import unsloth_backend
from fastnemo.targets import DEFAULT_TARGETS

# What Unsloth 2026.10 writes as target_modules when asked for the default targets (a regex, not a list).
UNSLOTH_REGEX = (
    r"(?!(?:.*\.)?(?:codec_model|audio_tokenizer)\.).*?(?:self_attn|attention|attn|mixer|mlp).*?\."
    r"(?:q_proj|k_proj|v_proj|o_proj|in_proj|up_proj|down_proj)"
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refuses_without_a_gpu():
    with pytest.raises(unsloth_backend.BackendUnavailable, match="needs a CUDA GPU.*backend = 'hf'"):
        unsloth_backend.check_available()


def test_saved_lora_config_reads_targets_from_the_weights(tiny_session, tmp_path):
    adapter = tiny_session.save_adapter(tmp_path / "adapter")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = UNSLOTH_REGEX  # as an Unsloth-trained adapter has it
    cfg_path.write_text(json.dumps(cfg))

    lora = unsloth_backend.saved_lora_config(adapter)
    assert lora.target_modules == sorted(DEFAULT_TARGETS)
    assert (lora.rank, lora.alpha, lora.train_experts) == (cfg["r"], cfg["lora_alpha"], False)
