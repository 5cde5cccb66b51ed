"""TRL 1.15 on machines without Triton.

TRL's trainers compute per-token log-probs through a fused LM head whose kernel is written in Triton,
which ships only with the CUDA builds of torch. On the CPU wheel TRL leaves that function as None and
every training step fails. ``ensure_fused_lm_head`` installs the same computation in plain torch (full
logits per chunk of tokens: fine at CPU sizes), with the same inputs and outputs, where Triton is absent.
"""

from __future__ import annotations

import torch


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
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is None:
        trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
