"""The "unsloth" model backend: Unsloth's loader and LoRA (16-bit or bitsandbytes 4-bit) for nemotron_h.

``load`` returns the same thing the "hf" backend does (a PEFT model and its tokenizer), so every stage runs
unchanged on either. What Unsloth changes for nemotron_h (read from unsloth 2026.10.9 / unsloth_zoo source):
- LoRA on the MoE experts: NemotronH keeps its 128 experts as two fused 3-D ``nn.Parameter``s
  (``mixer.experts.up_proj`` / ``down_proj``), which ``target_modules`` cannot reach. When ``up_proj`` or
  ``down_proj`` is targeted Unsloth adds them as PEFT ``target_parameters`` (a stacked LoRA per expert
  weight). The competition's vLLM serves NemotronH expert LoRA only as per-expert 2-D weights and refuses a
  stacked adapter, so an adapter that trains experts this way must be converted before submission.
- 4-bit: bitsandbytes quantizes 2-D ``nn.Linear`` weights only. The fused 3-D experts (about 93% of the
  30B weights) stay bf16, and Unsloth keeps the Mamba ``out_proj`` unquantized because the fused Mamba
  kernel reads ``out_proj.weight`` directly. So 4-bit saves little memory on this model.
- The Mamba ``out_proj`` and ``conv1d`` are read by mamba_ssm's fused kernel as plain weights in training:
  fastnemo.lora routes out_proj past the kernel (conv1d stays refused: vLLM does not serve it).
  Measured on the GPU lane (2026-12-02): out_proj's LoRA gets its gradient under Unsloth too.
- lm_head: Unsloth turns an lm_head target into ``modules_to_save`` (a full copy; vLLM rejects it), and its
  generated forwards' fused CE reads ``lm_head.weight``: a LoRA added after Unsloth's setup got no gradient
  on the GPU lane, even with Unsloth's ``unsloth_fused_lm_head_loss`` wrapped. So this backend leaves
  lm_head out; the hf backend trains it (TRL's fused head, ``fastnemo.lora``).

Unsloth patches transformers, PEFT and TRL when imported, so the caller should import this module before
transformers is first imported (``fastnemo.session`` does it when ``model.backend == "unsloth"``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig
from fastnemo.targets import MAX_LORA_RANK

INSTALL_HINT = (
    "install them as README's \"On the H100\" says (pip install -e '.[gpu]', then the Mamba kernels with "
    "--no-build-isolation); `fastnemo doctor` shows what this machine has. On the H100 test machine stage the "
    "wheels as bench/README.md says and set PYTHONPATH=/tmp/site"
)


class BackendUnavailable(RuntimeError):
    """The unsloth backend cannot run here; the message says what to install."""


def check_available() -> None:
    """Raise BackendUnavailable unless a CUDA GPU, unsloth and the Mamba kernels are all present.

    Without mamba-ssm + causal-conv1d transformers falls back to the PyTorch Mamba path, which is slow and
    runs out of memory at 4 x 2048 tokens on an 80 GB card with the real widths: better to stop here."""
    if not torch.cuda.is_available():
        raise BackendUnavailable("model.backend = 'unsloth' needs a CUDA GPU; use backend = 'hf' on CPU")
    missing = [
        m for m in ("unsloth", "unsloth_zoo", "mamba_ssm", "causal_conv1d") if not importlib.util.find_spec(m)
    ]
    if missing:
        raise BackendUnavailable(f"model.backend = 'unsloth': missing {', '.join(missing)}. {INSTALL_HINT}")


def experts_implementation(model_cfg: ModelConfig) -> str:
    return "grouped_mm" if model_cfg.experts_implementation == "auto" else model_cfg.experts_implementation


def _dtype(model_cfg: ModelConfig):
    return {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(model_cfg.dtype)


def import_first(vllm_engine: bool = False) -> None:
    """Import Unsloth before anything imports transformers: it patches transformers, PEFT and TRL on import
    and warns that its optimisations may not apply otherwise. With the vLLM engine, standby mode (vLLM's
    sleep/wake around training) must be chosen before that import. A no-op where it cannot run."""
    try:
        check_available()
    except BackendUnavailable:
        return
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    if vllm_engine:
        os.environ.setdefault("UNSLOTH_VLLM_STANDBY", "1")
        # Standby mode otherwise replaces gpu_memory_utilization with its own ~0.88 of the whole card, which
        # ignores generation.gpu_memory_utilization and, under a per-process memory cap, runs out of memory
        # (GPU lane 2026-12-02: 0.88 of an H200 under a 79.2 GiB cap). The recipe's share is the share.
        os.environ.setdefault("UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE", "1")
    import unsloth  # noqa: F401


def load(path: str | Path, model_cfg: ModelConfig, lora_cfg: LoraConfig, adapter: Path | None = None,
         seed: int = 0, gen_cfg: GenerationConfig | None = None):
    """Load the model at ``path`` through Unsloth with a fresh LoRA (or ``adapter``, trainable).

    With ``gen_cfg.engine == "vllm"`` Unsloth's ``fast_inference`` builds the in-process vLLM on the SAME
    weights (``model.vllm_engine``), which ``fastnemo.engines.vllm`` then drives: one copy of the 30B
    weights, not two. Returns (peft_model, tokenizer) like the hf backend."""
    check_available()
    fast_inference = gen_cfg is not None and gen_cfg.engine == "vllm"
    import_first(vllm_engine=fast_inference)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never let a loader reach for the hub
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401  (patches transformers / peft / trl on import)
    from unsloth import FastLanguageModel

    gc = "unsloth" if model_cfg.gradient_checkpointing else False
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=model_cfg.max_seq_length,
        dtype=_dtype(model_cfg),
        load_in_4bit=model_cfg.load_in_4bit,
        load_in_16bit=not model_cfg.load_in_4bit,
        full_finetuning=False,
        use_gradient_checkpointing=gc,
        local_files_only=True,
        experts_implementation=experts_implementation(model_cfg),
        **(
            # max_num_seqs: Unsloth's own pick from its memory estimate was 16 at full size under 80 GB
            # (1.7 k tok/s, GPU lane 2026-12-02); the engine's batch is what generation asks for
            {"fast_inference": True, "gpu_memory_utilization": gen_cfg.gpu_memory_utilization,
                 "max_lora_rank": MAX_LORA_RANK, "max_num_seqs": gen_cfg.batch_size}
            if fast_inference else {}
        ),
    )
    import tempfile

    from fastnemo import lora
    from fastnemo.pack import peft_loadable
    from fastnemo.patches.peft import allow_out_proj

    tmp = tempfile.TemporaryDirectory()  # a packed (vLLM-layout) adapter is converted back into it
    if adapter is not None:
        # Unsloth's own LoRA setup (its kernels, its gradient checkpointing) with the adapter's shape, then
        # the adapter's weights: a plain PeftModel.from_pretrained would skip Unsloth's patches.
        adapter = peft_loadable(adapter, Path(tmp.name))
        lora_cfg = saved_lora_config(adapter)
    targets = list(lora_cfg.target_modules)
    if "lm_head" in targets:
        # Unsloth makes an lm_head target a full trainable copy (modules_to_save: 700 MB + its AdamW state, and
        # a zip vLLM rejects), and a LoRA added there afterwards gets no gradient: its fused CE reads
        # lm_head.weight (GPU lane 2026-12-02, tests/fastnemo/test_gpu.py). lm_head trains on backend "hf".
        targets.remove("lm_head")
        print("unsloth backend: lm_head left out of the LoRA targets (Unsloth's fused loss bypasses an lm_head "
              "LoRA); model.backend = 'hf' trains it")
    with allow_out_proj():  # fastnemo.lora routes out_proj past the fused kernel
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora_cfg.rank,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=lora_cfg.dropout,
            target_modules=targets,
            bias="none",
            use_gradient_checkpointing=gc,
            random_state=seed,
            # None lets Unsloth add the fused experts as target_parameters; [] keeps them frozen
            target_parameters=None if lora_cfg.train_experts else [],
        )
    if adapter is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        result = set_peft_model_state_dict(model, load_file(str(Path(adapter) / "adapter_model.safetensors")))
        if result.unexpected_keys:
            raise ValueError(f"adapter {adapter}: weights the LoRA does not have: {result.unexpected_keys[:3]}")
    tmp.cleanup()
    lora.install(model)  # lm_head through TRL's fused head, out_proj past the fused kernel, grouped experts
    return model, tokenizer


def saved_lora_config(adapter: str | Path) -> LoraConfig:
    """The LoRA shape of a saved adapter. Its targets are read from the weights' names (exactly the modules
    that carry a LoRA), not from adapter_config.json: Unsloth saves target_modules as its own regex."""
    from peft import LoraConfig as PeftLoraConfig
    from safetensors import safe_open

    saved = PeftLoraConfig.from_pretrained(str(adapter))
    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
        names = {_target_of(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return LoraConfig(rank=saved.r, alpha=saved.lora_alpha, dropout=saved.lora_dropout,
                      target_modules=sorted(n for n in names if not n.startswith("experts")),
                      train_experts=any(n.startswith("experts") for n in names))


def lora_parameter_groups(model) -> dict[str, int]:
    """Trainable LoRA tensors per target (leaf module or expert parameter name): what actually got a LoRA."""
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_" in name:
            key = _target_of(name)
            groups[key] = groups.get(key, 0) + 1
    return groups


def _target_of(param_name: str) -> str:
    # ...layers.3.mixer.q_proj.lora_A.default.weight -> q_proj; experts: ...mixer.experts.lora_A... ->
    # experts.<param> (PEFT's ParamWrapper names the wrapped parameter in parameter_name).
    parts = param_name.split(".")
    i = next(i for i, p in enumerate(parts) if p.startswith("lora_"))
    head = [p for p in parts[:i] if p not in ("base_layer",)]
    if "experts" in head:
        return "experts." + head[-1] if head[-1] != "experts" else "experts"
    return head[-1]
