"""The model session: ONE loaded model, its tokenizer and its LoRA adapter, shared by every stage of a run.

SFT trains ``session.model`` in place, evaluation and distillation sample from it through ``session.engine``,
DAPO trains it again: no stage saves and reloads the model. ``ModelSession.loads`` counts loads in this
process, so a test can assert that a whole recipe loaded the model exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fastnemo.card import cap_memory
from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SamplingConfig
from fastnemo.engines import Completion, resolve_dtype
from fastnemo.targets import EXPERT_PARAMETERS, check_lora  # EXPERT_PARAMETERS: PEFT target_parameters
from puzzles import PROMPT_SUFFIX


def check_targets(model, targets: list[str]) -> None:
    """Every LoRA target must name a module of the model: a typo would otherwise train nothing there."""
    from fastnemo import lora

    lora.check_targets_in_model(model, targets)


def _load_hf(path: Path, model_cfg: ModelConfig, lora_cfg: LoraConfig, adapter: Path | None, seed: int):
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fastnemo import lora
    from fastnemo.patches.peft import allow_out_proj

    # "auto": transformers' own choice, grouped_mm wherever it can dispatch (CPU included), else eager
    experts = None if model_cfg.experts_implementation == "auto" else model_cfg.experts_implementation
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=resolve_dtype(model_cfg.dtype),
        experts_implementation=experts,
        device_map="cuda" if torch.cuda.is_available() else None,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if adapter is not None:
        import tempfile

        from fastnemo.pack import peft_loadable

        with tempfile.TemporaryDirectory() as tmp, allow_out_proj():  # a packed adapter loads too
            peft_model = PeftModel.from_pretrained(model, peft_loadable(adapter, Path(tmp)), is_trainable=True)
        lora.install(peft_model)
        return peft_model, tokenizer
    check_targets(model, lora_cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.rank,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        target_parameters=list(EXPERT_PARAMETERS) if lora_cfg.train_experts else None,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # the LoRA A matrices are drawn at random: a run must be reproducible
    with allow_out_proj():
        peft_model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=not lora_cfg.bf16_weights)
    lora.install(peft_model)  # lm_head through TRL's fused head, out_proj past the fused kernel, grouped experts
    return peft_model, tokenizer


class ModelSession:
    loads = 0  # models loaded by this process (see the module docstring)

    def __init__(self, model, tokenizer, model_cfg: ModelConfig, gen_cfg: GenerationConfig, path: Path,
                 lora_cfg: LoraConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.gen_cfg = gen_cfg
        self.path = path
        self.lora_cfg = lora_cfg or LoraConfig()  # the adapter's settings; the trainers read its optimizer lever
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._engine = None

    @property
    def started_engine(self):
        """The engine if something has generated already, else None (then it has nothing to sync or free)."""
        return self._engine

    @property
    def engine(self):
        """The generation engine, built on first use (an SFT-only run never starts vLLM)."""
        if self._engine is None:
            from fastnemo.engines import make_engine

            self._engine = make_engine(self.gen_cfg.engine, self)
        return self._engine

    @classmethod
    def load(
        cls,
        path: str | Path,
        model_cfg: ModelConfig,
        lora_cfg: LoraConfig,
        gen_cfg: GenerationConfig | None = None,
        adapter: str | Path | None = None,
        seed: int = 0,
    ) -> ModelSession:
        """Load the base model at ``path`` with a fresh LoRA (or ``adapter``, trainable) on the backend of
        ``model_cfg``."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.path {path}: no config.json there (expected a saved model folder)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise FileNotFoundError(f"model.path {path}: config.json but no weights (*.safetensors)")
        adapter = Path(adapter) if adapter else None
        if adapter is None:  # refused before any model loads
            check_lora(lora_cfg.target_modules, lora_cfg.rank)
        # mamba_ssm autotunes ~200 Triton kernel configs on a process's first step (81 s measured on the
        # test GPU); Triton can keep the winners in its on-disk cache so the next run starts at once
        os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
        cap_memory()
        if model_cfg.backend == "unsloth":
            from fastnemo import unsloth_backend

            model, tokenizer = unsloth_backend.load(path, model_cfg, lora_cfg, adapter, seed=seed, gen_cfg=gen_cfg)
        else:
            model, tokenizer = _load_hf(path, model_cfg, lora_cfg, adapter, seed)
        cls.loads += 1
        return cls(model, tokenizer, model_cfg, gen_cfg or GenerationConfig(), path, lora_cfg)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends the assistant turn: the tokenizer's and the generation config's (Nemotron-3-Nano
        lists several), the tokenizer's first."""
        ids = [self.tokenizer.eos_token_id]
        extra = getattr(self.model.generation_config, "eos_token_id", None)
        for i in [extra] if isinstance(extra, int) else (extra or []):
            if i not in ids:
                ids.append(i)
        return ids

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chat_prompt(self, puzzle_text: str) -> str:
        """The exact text the competition feeds the model: puzzle + instruction as a user turn, the assistant
        turn opened in reasoning mode."""
        messages = [{"role": "user", "content": puzzle_text + PROMPT_SUFFIX}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    def generate(self, puzzle_texts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        """``sampling.n`` completions for each puzzle, from the model as it is now."""
        return self.engine.generate([self.chat_prompt(t) for t in puzzle_texts], sampling)

    def save_adapter(self, out_dir: str | Path) -> Path:
        """Write adapter_config.json + adapter_model.safetensors (atomically: into a temp folder, then
        renamed), with the scored base model's name as base_model_name_or_path."""
        from puzzles.files import atomic_dir, disk_full_at

        with disk_full_at(out_dir), atomic_dir(out_dir) as tmp:
            # lm_head carries a LoRA, never a full copy of the base head (vLLM serves only the LoRA)
            self.model.save_pretrained(tmp, save_embedding_layers=False)
            set_base_model_name(tmp, self.model_cfg.base_model_name)
        return Path(out_dir)


def free_weights(model) -> None:
    """Empty every parameter and buffer of ``model`` in place, so that whatever still holds one of its modules
    (a library's registry: fastnemo.patches.bitsandbytes) holds no GPU memory. transformers' loader puts all
    the weights in one cudaMalloc segment, which the caching allocator returns only when every byte of it is
    free: one forgotten module would keep the whole model's memory from the next process (vLLM)."""
    for t in (*model.parameters(), *model.buffers()):
        try:
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        except (RuntimeError, TypeError):  # a tensor subclass that refuses (a quantized weight): left to gc
            pass


def free_cuda_cache() -> None:
    """Return every cached CUDA block to the driver, cuBLAS's workspaces included. cuBLAS takes a 32 MiB
    workspace per thread from the caching allocator on its first matmul (the forward's and the autograd
    thread's) and keeps it; carved from the loader's one big segment, two of them kept the whole model's
    memory (58.8 of 79 GiB on the lane, 2026-12-07) from the harness child's vLLM. The call is private to
    torch (``torch._C``), hence the guard; tests/fastnemo/test_gpu_lora.py's release test notices a change."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()


def set_base_model_name(adapter_dir: Path, name: str) -> None:
    import json

    cfg_path = Path(adapter_dir) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = name
    if isinstance(cfg.get("target_modules"), list):  # PEFT writes a set's order: sorted, two runs match byte for byte
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
