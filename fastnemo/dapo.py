"""``DAPOTrainer``: TRL 1.15's ``GRPOTrainer`` plus dynamic sampling, faithful completion text and our metrics.

Imported lazily (by ``fastnemo.grpo.make_trainer``), so only a DAPO run pays for TRL; with the Unsloth
backend the session has imported Unsloth first, and the ``GRPOTrainer`` imported here is Unsloth's patched
one. The subclass overrides three private TRL methods (``_generate``, ``_calculate_rewards``,
``_generate_and_score_completions``), so it is tied to the TRL version it was written against: importing
this module with another TRL is an error that says so, not a silent mis-training.

One optimizer step's rollout batch, top to bottom (``_generate_and_score_completions``):

1. TRL generates G completions for each of ``batch_prompts`` prompts and scores them (``_generate`` keeps the
   special tokens in the text the rewards read; ``_calculate_rewards`` records the weighted rewards).
2. Each group whose rewards all agree has zero advantage and teaches nothing: it is set aside.
3. While informative groups are missing and refills are left (``grpo.max_refills``), more prompts are drawn
   from the training rows and step 1-2 run again on them.
4. The batch is the informative groups, topped up with set-aside ones when refills ran out (zero advantage:
   no gradient), joined into one TRL batch (``join_batches``) with its DAPO token count.
5. TRL's own ``training_step`` takes the clipped DAPO loss on that batch; ``log`` adds per-category reward,
   completion length, timing and memory.
"""

from __future__ import annotations

import collections
import math
import random
import resource
import time

import torch
import trl
from trl import GRPOConfig as TRLGRPOConfig  # noqa: F401  (make_trainer's arguments; one TRL import site)
from trl import GRPOTrainer

# The TRL whose private methods DAPOTrainer overrides (pyproject.toml pins the same; a test checks).
TRL_VERSION = "1.15.0"
if trl.__version__ != TRL_VERSION:
    raise ImportError(
        f"fastnemo.dapo overrides private methods of TRL {TRL_VERSION}'s GRPOTrainer, but TRL "
        f"{trl.__version__} is installed: pip install trl=={TRL_VERSION} (or port DAPOTrainer and update "
        "TRL_VERSION)"
    )

# What TRL 1.15's GRPOTrainer._generate returns, in order: unpacked by these names, never by position.
GENERATE_FIELDS = ("prompt_ids", "completion_ids", "tool_mask", "completions", "logprobs", "extra_fields",
                   "images", "tool_images")


# ------------------------------------------------------------------------------------------ the batches


def group_signal(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """One bool per group: do its rewards differ (NaN rewards, unscorable completions, ignored)?"""
    g = rewards.view(-1, group_size)
    hi = torch.where(torch.isnan(g), -math.inf, g).amax(dim=1)
    lo = torch.where(torch.isnan(g), math.inf, g).amin(dim=1)
    return (hi - lo) > tol


# Keys of TRL's scored batch, by how rows of different widths are padded when batches are joined.
_LEFT = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT = {"completion_ids": "pad", "completion_mask": 0, "tool_mask": 1, "old_per_token_logps": 0.0,
          "sampling_per_token_logps": 0.0, "ref_per_token_logps": 0.0, "importance_sampling_ratio": 1.0}

# Unsloth's GRPO (unsloth_zoo rl_replacements) scores a row with its padding moved to the right and keeps
# the last completion-width + max_left_pad positions, max_left_pad being the batch's largest prompt left
# padding (the batch carries it as "max_left_pad"). So in its old/ref log-probs a row's completion starts at
# column max_left_pad - (that row's left padding). Rows joined from batches padded differently must be
# re-placed for the joined batch's padding, or the ratio pi/pi_old would pair tokens with other tokens.
_UNSLOTH_WINDOWED = ("old_per_token_logps", "ref_per_token_logps")


def _completion_columns(prompt_mask: torch.Tensor, width: int, max_left_pad: int) -> torch.Tensor:
    left = (prompt_mask == 0).sum(1)
    return (max_left_pad - left)[:, None] + torch.arange(width, device=prompt_mask.device)


def _unwindow(batch: dict) -> dict:
    """Unsloth's windowed log-probs -> TRL's layout (column j = completion token j)."""
    out = dict(batch)
    mlp, width = int(batch["max_left_pad"].max()), batch["completion_ids"].shape[1]
    cols = _completion_columns(batch["prompt_mask"], width, mlp)
    for key in _UNSLOTH_WINDOWED:
        if batch.get(key) is not None:
            if batch[key].shape[1] != width + mlp:
                raise NotImplementedError(f"dynamic sampling: Unsloth's {key} is {batch[key].shape[1]} wide, "
                                          f"expected completions + max_left_pad = {width + mlp}")
            out[key] = batch[key].gather(1, cols.to(batch[key].device))
    return out


def _rewindow(batch: dict) -> dict:
    """TRL's layout -> Unsloth's window, for the joined batch's own prompt padding."""
    left = (batch["prompt_mask"] == 0).sum(1)
    mlp, width = int(left.max()), batch["completion_ids"].shape[1]
    cols = _completion_columns(batch["prompt_mask"], width, mlp)
    for key in _UNSLOTH_WINDOWED:
        if batch.get(key) is not None:
            t = batch[key]
            batch[key] = t.new_zeros(t.shape[0], width + mlp).scatter_(1, cols.to(t.device), t)
    batch["max_left_pad"] = torch.full((len(left), 1), mlp)
    return batch


def join_batches(parts: list[tuple[dict, list[int]]], pad_id: int) -> dict:
    """Rows ``idx`` of each scored batch, stacked into one (prompts left-padded, completions right-padded)."""
    unsloth = "max_left_pad" in parts[0][0]
    if unsloth:
        parts = [(_unwindow(b), idx) for b, idx in parts]
    out = {}
    for key in parts[0][0]:
        if key in ("num_items_in_batch", "max_left_pad"):
            continue
        values = [b[key] for b, _ in parts]
        if all(v is None for v in values):  # e.g. no old log-probs when every update is on-policy
            out[key] = None
            continue
        if any(v is None for v in values):
            raise NotImplementedError(f"dynamic sampling: batch field {key!r} is missing in some batches only")
        tensors = [v[idx] for v, (_, idx) in zip(values, parts, strict=True)]
        if tensors[0].ndim == 1:  # one value per row: advantages, Unsloth's per-row flags
            out[key] = torch.cat(tensors)
            continue
        if key not in _LEFT and key not in _RIGHT:
            raise NotImplementedError(f"dynamic sampling cannot join TRL batch field {key!r} (multimodal?)")
        side, fill = ("left", _LEFT[key]) if key in _LEFT else ("right", _RIGHT[key])
        fill = pad_id if fill == "pad" else fill
        width = max(t.shape[1] for t in tensors)
        padded = []
        for t in tensors:
            extra = t.new_full((t.shape[0], width - t.shape[1]), fill)
            padded.append(torch.cat([extra, t] if side == "left" else [t, extra], dim=1))
        out[key] = torch.cat(padded)
    mask = out["completion_mask"] * out["tool_mask"] if out.get("tool_mask") is not None else out["completion_mask"]
    out["num_items_in_batch"] = mask.sum()  # the DAPO token normaliser of the joined batch
    return _rewindow(out) if unsloth else out


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch, or peak resident memory of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ------------------------------------------------------------------------------------------ the trainer


class DAPOTrainer(GRPOTrainer):
    def __init__(self, *args, refill_rows=None, dynamic_sampling=True, max_refills=4, refill_seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.max_refills = max_refills
        self._refill_rows = list(refill_rows or [])
        self._refill_rng = random.Random(refill_seed)
        self._refill_order: list[int] = []
        self._step_time = collections.defaultdict(float)
        self._cat_rewards = collections.defaultdict(list)
        self._lengths: list[int] = []

    # -- generation -------------------------------------------------------------------------------------
    def _generate(self, prompts):
        result = super()._generate(prompts)
        if len(result) != len(GENERATE_FIELDS):
            raise RuntimeError(f"TRL's GRPOTrainer._generate returned {len(result)} values, expected "
                               f"{GENERATE_FIELDS}: TRL changed; port fastnemo.dapo")
        out = dict(zip(GENERATE_FIELDS, result, strict=True))
        eos = set(self.eos_token_ids)
        # Decode again keeping special tokens (</think> may be one), end-of-turn stripped: the text the
        # engines return and the rewards expect.
        out["completions"] = [
            self._tokenizer.decode(ids[:-1] if ids and ids[-1] in eos else ids, skip_special_tokens=False)
            for ids in out["completion_ids"]
        ]
        self._lengths += [len(ids) for ids in out["completion_ids"]]
        return tuple(out[name] for name in GENERATE_FIELDS)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(1)
        mine = self._last_rewards
        if len(mine) != len(inputs):  # TRL gathered every data-parallel process's rewards: ours are a slice
            i = self.accelerator.process_index
            mine = mine[i * len(inputs) : (i + 1) * len(inputs)]
        for x, r in zip(inputs, mine.tolist(), strict=True):
            self._cat_rewards[x.get("category", "all")].append(r)
        return rewards_per_func

    def _draw(self, n_groups: int) -> list[dict]:
        """``n_groups`` prompts from the refill pool (reshuffled when used up), each repeated G times."""
        rows = []
        for _ in range(n_groups):
            if not self._refill_order:
                self._refill_order = list(range(len(self._refill_rows)))
                self._refill_rng.shuffle(self._refill_order)
            row = self._refill_rows[self._refill_order.pop()]
            rows += [dict(row) for _ in range(self.num_generations)]
        return rows

    def _generate_and_score_completions(self, inputs):
        t0 = time.perf_counter()
        if not self.model.training or not self.dynamic_sampling or not self._refill_rows:
            out = super()._generate_and_score_completions(inputs)
            self._step_time["generate"] += time.perf_counter() - t0
            return out
        G = self.num_generations
        want = len(inputs) // G
        kept, spare, seen, batch = [], [], 0, inputs
        for attempt in range(self.max_refills + 1):
            # 1. generate and score G completions per prompt
            scored = super()._generate_and_score_completions(batch)
            # 2. keep the groups whose rewards differ; set the others aside
            signal = group_signal(self._last_rewards, G).tolist()
            seen += len(signal)
            for g, ok in enumerate(signal):
                rows = list(range(g * G, (g + 1) * G))
                (kept if ok and len(kept) < want else spare).append((scored, rows))
            if len(kept) >= want or attempt == self.max_refills:
                break
            # 3. refill: draw as many prompts as the keep rate so far says are needed
            need = want - len(kept)
            keep_rate = max(len(kept) / seen, 1 / want)
            batch = self._draw(min(want, max(need, math.ceil(need / keep_rate))))
        # 4. the batch: informative groups, topped up with set-aside ones, joined into one TRL batch
        groups = kept + spare[: want - len(kept)]
        m = self._metrics["train"]
        m["dynamic/dropped_share"].append((seen - len(kept)) / seen)
        m["dynamic/refills"].append(attempt)
        m["dynamic/zero_signal_kept"].append(want - min(len(kept), want))
        by_batch: dict[int, tuple[dict, list[int]]] = {}  # rows of the same scored batch in one index list
        for scored, rows in groups:
            by_batch.setdefault(id(scored), (scored, []))[1].extend(rows)
        joined = join_batches(list(by_batch.values()), self._tokenizer.pad_token_id)
        self._step_time["generate"] += time.perf_counter() - t0
        return joined  # 5. TRL's training_step takes the DAPO loss on it

    # -- bookkeeping ------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch):
        t0 = time.perf_counter()
        out = super().training_step(model, inputs, num_items_in_batch)
        self._step_time["total"] += time.perf_counter() - t0
        if self._step % self.current_gradient_accumulation_steps == 0:
            m = self._metrics["train"]
            m["time/generate_s"].append(self._step_time["generate"])
            m["time/train_s"].append(self._step_time["total"] - self._step_time["generate"])
            self._step_time.clear()
        return out

    def log(self, logs, start_time=None):
        if self.model.training:
            m = self._metrics["train"]
            for cat, rs in self._cat_rewards.items():
                t = torch.tensor(rs)
                m[f"reward/{cat}/mean"].append(t.mean().item())
                m[f"reward/{cat}/std"].append(t.std(unbiased=False).item())
            if self._lengths:
                t = torch.tensor(self._lengths, dtype=torch.float)
                m["completions/length_mean"].append(t.mean().item())
                m["completions/length_p95"].append(torch.quantile(t, 0.95).item())
            m["memory/peak_gb"].append(peak_memory_gb())
        self._cat_rewards.clear()
        self._lengths.clear()
        super().log(logs, start_time)
