"""transformers ``generate`` on the session's in-memory PEFT model: the CPU path and the H100 test lane.

Batches are sorted by prompt length (less padding), left-padded, and run under the same sampling settings
as the vLLM engine. The model is switched to eval mode for generation and back to its previous mode after.
"""

from __future__ import annotations

import torch

from fastnemo.config import SamplingConfig


class HFEngine:
    def __init__(self, session):
        self.session = session

    def sync_weights(self) -> None:  # generates with the training model itself
        pass

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, chat_prompts: list[str], sampling: SamplingConfig) -> list[list]:
        from fastnemo.engines import Completion

        model, tok = self.session.model, self.session.tokenizer
        batch_size = max(1, self.session.gen_cfg.batch_size // max(1, sampling.n))
        order = sorted(range(len(chat_prompts)), key=lambda i: len(chat_prompts[i]))
        results: list[list[Completion]] = [[] for _ in chat_prompts]
        was_training = model.training
        model.eval()
        tok.padding_side = "left"
        eos = self.session.eos_token_ids
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tok([chat_prompts[i] for i in idx], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(self.session.device)
                greedy = sampling.temperature <= 0
                if not greedy:
                    torch.manual_seed(sampling.seed + start)
                out = model.generate(
                    **enc,
                    max_new_tokens=sampling.max_tokens,
                    do_sample=not greedy,
                    temperature=sampling.temperature if not greedy else None,
                    top_p=sampling.top_p if not greedy else None,
                    top_k=None,
                    num_return_sequences=sampling.n,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                for row, tokens in enumerate(new):
                    ids = tokens.tolist()
                    ends = [i for i, t in enumerate(ids) if t in eos]
                    stop = bool(ends)
                    ids = ids[: ends[0]] if stop else [t for t in ids if t != tok.pad_token_id]
                    text = tok.decode(ids, skip_special_tokens=False)
                    results[idx[row // sampling.n]].append(
                        Completion(text=text, n_tokens=len(ids), finish_reason="stop" if stop else "length",
                                   token_ids=ids)
                    )
        finally:
            model.train(was_training)
        return results
