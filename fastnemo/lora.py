"""LoRA on every module vLLM serves for nemotron_h: target resolution and the three places PEFT + TRL alone
cannot train. The routes are fastnemo's own; where they replace another library's private code, they do it
through ``fastnemo.patches`` (one module per library, version guarded).

- ``lm_head``: TRL's fused LM head multiplies the hidden states by ``lm_head.weight`` itself, so a PEFT LoRA
  there gets no gradient. :func:`install_lm_head_lora` routes around it exactly: ``h W^T + s (h A^T) B^T`` is
  ``[h, s h A^T] [W, B]^T``, so the fused kernel is handed the widened hidden states and weight.
- Mamba ``out_proj``: the fused ``mamba_split_conv1d_scan_combined`` kernel reads ``out_proj.weight`` (PEFT
  refuses the target for that reason; ``fastnemo.patches.peft.allow_out_proj`` lifts that). :func:`install_out_proj_lora` makes the kernel return the
  pre-projection output and applies the ``out_proj`` module, where the LoRA is. The CPU (torch) path already
  calls ``self.out_proj``.
- Routed experts: PEFT's ParamWrapper holds the stacked factors (``lora_A`` (E*r, in), ``lora_B`` (out, E*r))
  but folds ``W + dW`` for all experts on every forward. :func:`install_grouped_expert_lora` replaces that
  forward with a grouped GEMM per expert over the routed tokens only: ``x W_e^T + s (x A_e^T) B_e^T``.
"""

from __future__ import annotations

import contextlib
import weakref

import torch


def check_targets_in_model(model, targets: list[str]) -> None:
    """Every target must name a module of the model: a typo would otherwise train nothing there."""
    leaf = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaf]
    if missing:
        raise ValueError(
            f"lora.target_modules: {missing} not found in {model.config.model_type}; modules available "
            f"include {sorted(n for n in leaf if n.endswith('proj') or n == 'lm_head')}"
        )


# ------------------------------------------------------------------------------------------------ lm_head

# id(lm_head.base_layer.weight) -> the PEFT lora.Linear on it. Weak: a released model's modules must not stay
# (nor the GPU segment its weights share with the rest of the model: fastnemo.patches.bitsandbytes says why)
_LM_HEADS: weakref.WeakValueDictionary[int, torch.nn.Module] = weakref.WeakValueDictionary()


def _active_lora(module):
    """(A, B, scaling) of the single active adapter of a PEFT LoRA layer, or None when it does not apply."""
    if module.disable_adapters or module.merged:
        return None
    names = [a for a in module.active_adapters if a in module.lora_A]
    if not names:
        return None
    (name,) = names  # fastnemo trains one adapter
    return module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]


class LoraChunkedLogProb:
    """Wraps TRL's ``_ChunkedLogProbFunction``: when the weight it is handed is a LoRA'd lm_head's base
    weight, it passes ``[h, s h A^T]`` and ``[W, B]`` instead, whose product is the LoRA'd logits."""

    def __init__(self, inner):
        self.inner = inner

    def apply(self, hidden, weight, bias, *args, **kwargs):
        module = _LM_HEADS.get(id(weight))
        factors = _active_lora(module) if module is not None else None
        if factors is not None:
            a, b, s = factors
            low = torch.nn.functional.linear(hidden.to(a.dtype), a) * s
            hidden = torch.cat([hidden, low.to(hidden.dtype)], dim=-1)
            weight = torch.cat([weight, b.to(weight.dtype)], dim=-1)
        inner = self.inner
        if inner is None:  # no Triton (CPU torch): the plain-torch equivalent
            from fastnemo.patches.trl import TorchChunkedLogProb as inner
        return inner.apply(hidden, weight, bias, *args, **kwargs)


def install_lm_head_lora(model) -> None:
    """Make TRL's fused LM head include the lm_head LoRA of ``model`` (a PeftModel)."""
    from fastnemo.patches.trl import wrap_fused_lm_head

    head = model.get_output_embeddings()
    if not hasattr(head, "lora_A"):
        return
    _LM_HEADS[id(head.base_layer.weight)] = head
    wrap_fused_lm_head(LoraChunkedLogProb)


@contextlib.contextmanager
def lean_checkpoints(model):
    """The Trainer's checkpoints carry the LoRA tensors only. With lm_head a target, PEFT's default
    ``save_embedding_layers="auto"`` would also write the frozen base lm_head (700 MB at the released vocab
    and width) into every checkpoint; it is never trained, so resuming does not need it."""
    own = model.__dict__.get("save_pretrained")  # a backend (Unsloth) may have patched the instance
    save = model.save_pretrained
    model.save_pretrained = lambda *a, **kw: save(*a, **{"save_embedding_layers": False, **kw})
    try:
        yield
    finally:
        if own is None:
            del model.save_pretrained
        else:
            model.save_pretrained = own


# ------------------------------------------------------------------------------------------------ out_proj

# id(out_proj.base_layer.weight) -> the PEFT lora.Linear; weak, as _LM_HEADS
_OUT_PROJS: weakref.WeakValueDictionary[int, torch.nn.Module] = weakref.WeakValueDictionary()


def _fused_without_out_proj(inner):
    def fused(*args, outproj_weight=None, outproj_bias=None, **kwargs):
        module = _OUT_PROJS.get(id(outproj_weight)) if outproj_weight is not None else None
        if module is None:
            return inner(*args, outproj_weight=outproj_weight, outproj_bias=outproj_bias, **kwargs)
        out = inner(*args, outproj_weight=None, outproj_bias=None, **kwargs)
        if out is None:  # no kernel: transformers falls back to the torch path, which calls out_proj itself
            return None
        return module(out.to(outproj_weight.dtype))

    return fused


def install_out_proj_lora(model) -> None:
    """Route every LoRA'd Mamba out_proj of ``model`` through its module on the fused (GPU) path."""
    from fastnemo.patches.transformers import wrap_mamba_fused_kernel

    for name, module in model.named_modules():
        if name.endswith("mixer.out_proj") and hasattr(module, "lora_A"):
            _OUT_PROJS[id(module.base_layer.weight)] = module
    wrap_mamba_fused_kernel(_fused_without_out_proj)


# ------------------------------------------------------------------------------------------- routed experts


def expert_factors(wrapper) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """Per-expert (A (E, r, in), B (E, out, r), scaling) views of a PEFT ParamWrapper's stacked factors
    (``A.reshape(E, r, in)``, ``B.reshape(out, r, E)``: PEFT's own layout), or None when inactive."""
    f = _active_lora(wrapper)
    if f is None:
        return None
    a, b, s = f
    e = wrapper.num_experts
    return a.reshape(e, -1, a.shape[-1]), b.reshape(b.shape[0], -1, e).permute(2, 0, 1).contiguous(), s


def unstack(a: torch.Tensor, b: torch.Tensor, num_experts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's stacked (E*r, in), (out, E*r) factors as one (A_e (r, in), B_e (out, r)) pair per expert."""
    a3 = a.reshape(num_experts, -1, a.shape[-1])
    b3 = b.reshape(b.shape[0], -1, num_experts)
    return [(a3[e].contiguous(), b3[:, :, e].contiguous()) for e in range(num_experts)]


def restack(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`unstack`."""
    a = torch.stack([p[0] for p in pairs]).reshape(-1, pairs[0][0].shape[-1])
    b = torch.stack([p[1] for p in pairs], dim=-1).reshape(pairs[0][1].shape[0], -1)
    return a, b


def _grouped(x, w, offsets):
    """x (S, in) @ w (E, out, in)^T per expert group (transformers' grouped GEMM, with its CPU fallback)."""
    from fastnemo.patches.transformers import grouped_linear

    return grouped_linear(x, w, offsets)


def _lora_linear(x, w, factors, offsets, dropout):
    y = _grouped(x, w, offsets)
    if factors is not None:
        a, b, s = factors
        # in the base weight's dtype: torch._grouped_mm runs bf16 only (fp32 falls back to a per-expert loop);
        # the cast's backward brings the gradient back to PEFT's fp32 A and B
        a, b = a.to(w.dtype), b.to(w.dtype)
        low = _grouped(dropout(x), a, offsets)  # (S, r): routed tokens only
        y = y + _grouped(low, b, offsets) * s
    return y


def _dropout(wrapper):
    names = [a for a in wrapper.active_adapters if a in wrapper.lora_dropout]
    return wrapper.lora_dropout[names[0]] if names else torch.nn.Identity()


def grouped_expert_forward(outer, hidden_states, top_k_index, top_k_weights):
    """nemotron_h's routed experts (``down(act(up(x)))`` per expert) with the LoRA branch computed per
    expert on its routed tokens; the base weights are never added to."""
    down_w, up_w = outer, outer.base_layer
    experts = up_w.base_layer
    if outer.disable_adapters or outer.merged:
        return experts(hidden_states, top_k_index, top_k_weights)
    k = top_k_index.size(-1)
    expert_ids, perm = torch.sort(top_k_index.reshape(-1))
    x = hidden_states[perm // k]
    counts = torch.bincount(expert_ids, minlength=experts.num_experts)
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    h = _lora_linear(x, experts.up_proj, expert_factors(up_w), offsets, _dropout(up_w))
    h = experts.act_fn(h)
    y = _lora_linear(h, experts.down_proj, expert_factors(down_w), offsets, _dropout(down_w))
    y = y * top_k_weights.reshape(-1)[perm].unsqueeze(-1).to(y.dtype)
    out = torch.zeros_like(hidden_states, dtype=y.dtype).index_add_(0, perm // k, y)
    return out.to(hidden_states.dtype)


def install_grouped_expert_lora(model) -> int:
    """Replace PEFT's fold-everything forward on every nemotron_h experts block that carries LoRA on both
    up_proj and down_proj. Returns how many blocks were patched."""
    from fastnemo.patches.peft import replace_expert_forward

    return replace_expert_forward(model, grouped_expert_forward)


def install(model) -> None:
    """Every fastnemo LoRA route on a PEFT nemotron_h model: lm_head, Mamba out_proj, grouped experts."""
    install_lm_head_lora(model)
    install_out_proj_lora(model)
    install_grouped_expert_lora(model)
