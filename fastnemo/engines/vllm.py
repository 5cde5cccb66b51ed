"""In-process vLLM, colocated with the trainer: fast sampling for evaluation, distillation and DAPO.

Two paths, picked by what the session loaded:

- Unsloth ``fast_inference`` (the H100 path): Unsloth built the vLLM engine itself and the training model
  shares its base weights (``session.model.vllm_engine``). vLLM never holds a copy of the LoRA: each
  ``sync_weights`` takes a fresh ``LoRARequest`` from ``model.load_lora(name, load_tensors=True)``, which
  hands vLLM the live adapter tensors without a disk round-trip (unsloth_zoo ``vllm_utils.load_lora``; its
  GRPO trainer does exactly this before every rollout). ``sleep``/``wake`` are vLLM's sleep mode, which
  Unsloth enables with ``UNSLOTH_VLLM_STANDBY=1``.
- Plain vLLM (anything else, CPU included): ``vllm.LLM`` loads the base model from ``session.path`` into its
  own copy. ``weight_sync="merge"`` (default) pushes the weights with the LoRA merged in, from memory, the
  way TRL's GRPO colocate mode does (trl/generation/vllm_generation.py ``sync_weights``), with two changes:
  the merge is computed out of place (``W + get_delta_weight()``), because TRL's in-place
  ``merge_adapter()``/``unmerge_adapter()`` leaves W + delta - delta != W in bf16 after hundreds of syncs;
  and the weights go through vLLM's in-place ``reload_weights`` rather than ``model.load_weights``, which
  fails on the CPU backend once it has repacked the linear weights. Then vLLM's prefix cache is reset (its
  KV was computed with the old weights). ``weight_sync="lora"`` instead writes the adapter to a per-version
  folder and serves it with a ``LoRARequest``: vLLM's LoRA kernels, no merge, a small disk write per sync.

Prompts are tokenized here with ``add_special_tokens=False`` (the chat template already wrote the special
tokens) and completions decoded here, both with the session's tokenizer, exactly as the hf engine does, so
the two engines see and return the same tokens.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from pathlib import Path

from fastnemo.config import GenerationConfig, SamplingConfig

WEIGHT_SYNCS = ("merge", "lora")


def _unsloth_llm(model):
    """The vLLM engine Unsloth attached to the model (fast_inference=True), else None."""
    return getattr(model, "vllm_engine", None)  # PeftModel forwards the lookup to the wrapped model


def shutdown(llm) -> None:
    """Stop ``llm``'s engine core so its GPU memory goes back before the harness child starts its own vLLM
    (V1 runs the core in a background process, or in this one with multiprocessing off; both answer
    ``shutdown``). Unsloth's resident engine included: the trainer that shared its weights is being freed."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def merged_weights(model):
    """(checkpoint name, tensor) for every weight of a PEFT model, each LoRA-wrapped weight replaced by
    base + LoRA delta, computed out of place: the training model is not touched.

    This is TRL's ``_iter_named_params`` for a PEFT model (same name mapping: drop PEFT's
    ``base_model.model.`` prefix and ``.base_layer`` hop, skip the LoRA tensors), minus its in-place
    ``merge_adapter()``/``unmerge_adapter()``, plus two things vLLM's reload needs for nemotron_h (see
    ``_checkpoint_items``): the persistent buffers (the router's ``e_score_correction_bias``) and the fused
    3-D experts unstacked into the checkpoint's per-expert keys. Every weight is sent, not only the
    LoRA-targeted ones: vLLM's in-place reload rebuilds a fused layer (qkv_proj, gate_up_proj) only from a
    complete set of its parts, and after a level-2 sleep every weight it is not sent is garbage."""
    import torch
    from peft.tuners.lora import LoraLayer

    merged = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or not module.active_adapters:
                continue
            base = module.get_base_layer()
            if not isinstance(getattr(base, "weight", None), torch.Tensor) or base.weight.dim() != 2:
                raise NotImplementedError(
                    f"vllm engine: cannot merge the LoRA on {name} ({type(module).__name__}); only 2-D "
                    "weights (Linear, Embedding) are supported by weight_sync='merge' (use 'lora')"
                )
            weight = base.weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in module.lora_embedding_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            merged[_checkpoint_name(name) + ".weight"] = weight
        for name, param in model.named_parameters():
            if "lora_" in name or "original_module" in name:
                continue
            name = _checkpoint_name(name).replace("modules_to_save.default.", "")
            yield from _checkpoint_items(name, merged.get(name, param.detach()))
        persistent = set(model.state_dict(keep_vars=True))
        for name, buf in model.named_buffers():
            if name in persistent and "lora_" not in name:
                yield from _checkpoint_items(_checkpoint_name(name), buf.detach())


def _checkpoint_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


_FUSED_EXPERTS = re.compile(r"^(.*\.experts)\.(up_proj|down_proj|gate_up_proj)$")


def _checkpoint_items(name: str, tensor):
    """The (name, tensor) pairs of the on-disk checkpoint for one transformers weight.

    transformers 5 merges nemotron_h's per-expert ``experts.{e}.up_proj.weight`` into one 3-D
    ``experts.up_proj`` (conversion_mapping.py; it also loads ``backbone.`` as ``model.``, which vLLM's
    own mapper accepts). vLLM 0.26's reload matches a 3-D ``experts.up_proj`` to none of its expert
    mappings (the probe's "w13_weight, w2_weight were not loaded"), so the experts go back to the
    checkpoint's per-expert 2-D keys (transformers' [E, out, in] is the stack of the checkpoint's [out, in])."""
    m = _FUSED_EXPERTS.match(name)
    if m and tensor.dim() == 3:
        for e in range(tensor.shape[0]):
            yield f"{m.group(1)}.{e}.{m.group(2)}.weight", tensor[e]
        return
    yield name, tensor


class VLLMEngine:
    def __init__(self, session, gen_cfg: GenerationConfig, weight_sync: str = "merge"):
        if weight_sync not in WEIGHT_SYNCS:
            raise ValueError(f"vllm engine: weight_sync must be one of {WEIGHT_SYNCS}, got {weight_sync!r}")
        # In-process engine core: the only way vLLM can share this process's model (and the tests' stdout).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from fastnemo.requires import require

        require("vllm", why="generation.engine = 'vllm' (or set generation.engine = 'hf')")
        self.session = session
        self.gen_cfg = gen_cfg
        self.weight_sync = weight_sync
        self.version = 0
        self._lora_request = None
        self._lora_root: Path | None = None
        self.llm = _unsloth_llm(session.model)
        self.unsloth = self.llm is not None
        if not self.unsloth:
            self.llm = self._build_llm()
        self.sync_weights()  # a resumed adapter (or a trained one) must reach vLLM before the first generate

    def _build_llm(self):
        import torch
        from vllm import LLM

        from fastnemo.engines import resolve_dtype

        cuda = torch.cuda.is_available()
        dtype = resolve_dtype(self.session.model_cfg.dtype)
        kwargs = {}
        if not cuda and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            # The CPU worker sizes its KV cache as (memory share - this process's RSS), which is negative once
            # the trainer (or a second engine) lives in the process: ask for a fixed, toy-model-sized cache.
            kwargs["kv_cache_memory_bytes"] = 512 << 20
        from fastnemo import distributed

        if distributed.world() > 1:
            # one engine per data-parallel process, inside the launcher's process group (as TRL's colocate
            # mode builds it): vLLM joins the existing group instead of starting one of its own
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.weight_sync == "lora":
            peft_cfg = self.session.model.peft_config["default"]
            max_rank = next(r for r in (8, 16, 32, 64) if r >= peft_cfg.r)  # the ranks vLLM accepts
            kwargs.update(enable_lora=True, max_lora_rank=max_rank, max_loras=1)
        return LLM(
            model=str(self.session.path),
            dtype=str(dtype).removeprefix("torch."),
            max_model_len=self.gen_cfg.max_model_len,
            max_num_seqs=self.gen_cfg.batch_size,
            # On the CPU backend this is the share of host memory reserved for the KV cache: keep it small,
            # the trainer lives in the same process.
            gpu_memory_utilization=self.gen_cfg.gpu_memory_utilization if cuda else 0.1,
            enable_sleep_mode=cuda,  # the CPU platform refuses sleep mode
            enforce_eager=not cuda,  # CPU torch.compile warm-up costs ~70 s on 2 cores for a toy model
            seed=0,
            **kwargs,
        )

    # -- weights ------------------------------------------------------------------------------------------

    def sync_weights(self) -> None:
        """Make vLLM generate with the LoRA weights as the training model holds them now."""
        self.version += 1
        if self.unsloth:
            # A fresh request id each call (load_lora counts them), so vLLM never serves a cached older copy.
            load_lora = getattr(self.session.model, "load_lora", None)
            if load_lora is None:  # an adapter resumed with PeftModel.from_pretrained has no bound helper
                from unsloth_zoo.vllm_utils import load_lora as zoo_load_lora

                load_lora = functools.partial(zoo_load_lora, self.session.model)
            self._lora_request = load_lora("fastnemo_lora", load_tensors=True)
        elif self.weight_sync == "lora":
            self._lora_request = self._adapter_request()
        else:
            # TRL calls model.load_weights directly; on the CPU backend that fails once the linear weights
            # were repacked for its GEMM kernels ("'Parameter' object has no attribute 'weight_loader'").
            # vLLM's in-place reload restores the loaders, loads, and re-runs the repacking.
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": merged_weights(self.session.model), "is_checkpoint_format": True},
            )
            self.llm.reset_prefix_cache()

    def _adapter_request(self):
        from vllm.lora.request import LoRARequest

        if self._lora_root is None:
            self._lora_root = Path(tempfile.mkdtemp(prefix="fastnemo-vllm-lora-"))
        out = self._lora_root / f"v{self.version}"
        # Without save_embedding_layers=False PEFT also writes the whole embedding/lm_head when lm_head is
        # a LoRA target: vLLM needs only the LoRA tensors.
        self.session.model.save_pretrained(out, save_embedding_layers=False)
        if self._lora_request is not None:  # vLLM keeps the old adapter loaded until told otherwise
            self.llm.llm_engine.remove_lora(self._lora_request.lora_int_id)
            shutil.rmtree(self._lora_request.lora_path, ignore_errors=True)
        return LoRARequest(f"fastnemo-v{self.version}", self.version, str(out))

    # -- memory -------------------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Hand vLLM's memory back to training (GPU only; a no-op on CPU, whose vLLM has no sleep mode)."""
        if self._can_sleep() and not self.llm.llm_engine.is_sleeping():
            # Unsloth's shared weights belong to the trainer: level 1, and with UNSLOTH_VLLM_STANDBY its
            # allocator leaves the weights in place and frees the KV cache. Our own copy goes at level 2
            # (discarded, as TRL does): wake puts it back.
            self.llm.sleep(level=1 if self.unsloth else 2)

    def wake(self) -> None:
        if self._can_sleep() and self.llm.llm_engine.is_sleeping():
            self.llm.wake_up()
            if not self.unsloth:
                self._reload_after_sleep()

    def _can_sleep(self) -> bool:
        return bool(self.llm.llm_engine.vllm_config.model_config.enable_sleep_mode)

    def _reload_after_sleep(self) -> None:
        # Level 2 threw the weights away. "merge" re-sends all of them from the training model (as TRL does
        # after its level-2 sleep); "lora" serves the base unchanged, so vLLM rereads it from disk.
        if self.weight_sync == "merge":
            self.sync_weights()
        else:
            self.llm.collective_rpc("reload_weights")

    # -- generation ---------------------------------------------------------------------------------------

    def sampling_params(self, sampling: SamplingConfig):
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        return SamplingParams(
            n=sampling.n,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            # Decoding happens here, with the session's tokenizer, as in the hf engine.
            detokenize=False,
        )

    def generate(self, chat_prompts: list[str], sampling: SamplingConfig) -> list[list]:
        from fastnemo.engines import Completion

        tok = self.session.tokenizer
        prompts = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in chat_prompts]
        outputs = self.llm.generate(
            prompts, self.sampling_params(sampling), lora_request=self._lora_request, use_tqdm=False
        )
        eos = set(self.session.eos_token_ids)
        results = []
        for out in outputs:
            completions = []
            for c in out.outputs:
                ids = list(c.token_ids)
                stop = c.finish_reason != "length"
                if ids and ids[-1] in eos:
                    ids = ids[:-1]
                text = tok.decode(ids, skip_special_tokens=False)
                completions.append(
                    Completion(text=text, n_tokens=len(ids), finish_reason="stop" if stop else "length",
                               token_ids=ids)
                )
            results.append(completions)
        return results
