"""Patches of TRL's private code (written against TRL 1.15.0, the version pyproject.toml pins).

- ``ensure_fused_lm_head``: TRL's trainers compute per-token log-probs through a fused LM head
  (``trl.trainer.utils._ChunkedLogProbFunction``, called by ``add_fused_lm_head``'s forward) whose kernel is
  written in Triton, which ships only with the CUDA builds of torch. On the CPU wheel TRL leaves that name
  None and every training step fails; this installs the same computation in plain torch
  (``TorchChunkedLogProb``: full logits per chunk of tokens, fine at CPU sizes), same inputs and outputs.
- ``wrap_fused_lm_head``: the same name wrapped, so that ``fastnemo.lora`` can hand the fused head an
  lm_head LoRA (``LoraChunkedLogProb``).
- ``trl_accepts_lm_head``: SFTTrainer and GRPOTrainer refuse a PEFT lm_head in ``__init__`` (their fused head
  would ignore it); with the wrapped head it does not, so they are shown the base layer while being built.
"""

from __future__ import annotations

import contextlib

import torch
import trl
import trl.trainer.utils as trl_utils

from fastnemo.patches import require, wrap_once

WRITTEN_AGAINST = "1.15.0"
require("trl", trl.__version__, WRITTEN_AGAINST, accepts=WRITTEN_AGAINST, module=__name__)

# What the patches below replace or depend on (tests/fastnemo/test_patches.py pins their source)
RELIES_ON = (
    "trl.trainer.utils.add_fused_lm_head",  # calls _ChunkedLogProbFunction.apply(hidden, weight, bias, ...)
    "trl.trainer.sft_trainer.SFTTrainer.__init__",  # the lm_head refusal
    "trl.trainer.grpo_trainer.GRPOTrainer.__init__",  # the lm_head refusal
)


class TorchChunkedLogProb(torch.autograd.Function):
    """Drop-in for ``trl.kernels.ChunkedLogProbFunction``: returns (logprobs, entropy, log_sum_sq_probs,
    mean_logits, is_top1), the optional ones None unless named in ``outputs``. Autograd does the backward."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        logits = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1)
        logprobs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():
            sq = torch.logsumexp(2 * logp, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean = logits.mean(-1) if "mean_logits" in outputs else None
            top1 = (logits.argmax(-1) == targets) if "is_top1" in outputs else None
        return logprobs, entropy, sq, mean, top1


def ensure_fused_lm_head() -> None:
    """The plain-torch fused head where TRL has none (no Triton)."""
    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is None:
        trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb


def wrap_fused_lm_head(wrap) -> None:
    """Replace TRL's fused head ``f`` by ``wrap(f)`` (``f`` may be None: no Triton), once per process."""
    wrap_once(trl_utils, "_ChunkedLogProbFunction", wrap)


@contextlib.contextmanager
def trl_accepts_lm_head(model):
    """TRL's trainers refuse a PEFT lm_head at construction (their fused head would ignore it). With
    ``fastnemo.lora.install_lm_head_lora`` it does not: show them the base layer while they are being built."""
    head = model.get_output_embeddings()
    if not hasattr(head, "base_layer"):
        yield
        return
    model.get_output_embeddings = lambda: head.base_layer
    try:
        yield
    finally:
        del model.get_output_embeddings
