"""DAPO on the session's one model, with TRL 1.15's ``GRPOTrainer``.

What TRL provides, set from ``GRPOConfig``: group sampling (``num_generations`` = group_size), the clipped
objective with DAPO's decoupled clip range (``epsilon`` 0.2 / ``epsilon_high`` 0.28), no KL term
(``beta`` 0: no reference model is built), token-level loss normalisation (``loss_type="dapo"``), and
masking of truncated completions out of the loss (``mask_truncated_completions``, overlong = "mask").

What fastnemo adds (``fastnemo.dapo.DAPOTrainer``, a thin subclass in its own module, imported when a
trainer is made; this module keeps the batch joining, the rollouts, the data and ``train``):

- Dynamic sampling, which TRL 1.15 lacks: a group whose rewards are all equal has zero advantage and
  teaches nothing, so it is dropped and more prompts are drawn (from the same dataset) until the batch
  holds ``batch_prompts`` informative groups, for at most ``grpo.max_refills`` extra rounds; slots still empty
  after that keep dropped groups (zero advantage: they add no gradient). The dropped share is logged.
- Faithful completion text for the rewards: TRL decodes with ``skip_special_tokens=True``, which deletes
  ``</think>`` where it is a special token; we decode again with special tokens kept, as the engines do.
- Rollouts through ``session.engine`` when it is not the hf engine (TRL's ``rollout_func``): the vLLM
  engine samples, ``sync_weights`` first whenever an optimizer step changed the LoRA. With the hf engine
  TRL generates with ``session.model`` itself, which is the same thing without a detour.
- Per-step metrics (to ``log`` -> metrics.jsonl): reward mean/std per category, dropped share, completion
  length mean/p95, generation vs training seconds, peak memory; TRL adds clip ratios, and entropy where its
  own loss runs (hf backend; Unsloth's GRPO loss, scored from hidden states in chunks, does not log it).

The trainer wraps ``session.model`` (no copy, no second model), so generation right after training uses
the updated LoRA. An interrupted run resumes from the last trainer checkpoint (every ``save_steps``).
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from pathlib import Path

import torch

from fastnemo.config import GRPOConfig, Recipe, SamplingConfig
from fastnemo.rewards import reward_funcs
from fastnemo.seeds import call_seed, derive_seed


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


# ---------------------------------------------------------------------------------------------- rollouts


def engine_rollout(session, cfg: GRPOConfig, seed: int = 0):
    """A TRL ``rollout_func`` that samples with ``session.engine``: one engine call per batch, n = G.

    TRL passes the prompts repeated G times in a row (its sampler's groups); we ask the engine for G
    samples of each distinct prompt. The engine returns text; completion ids are the engine's when it
    reports them (``Completion.token_ids``), else the text encoded again plus the end-of-turn token."""
    tok = session.tokenizer
    state = {"synced_step": 0, "calls": 0}

    def rollout(prompts: list[str], trainer) -> dict:
        G = trainer.num_generations
        unique = prompts[::G]
        if [p for p in unique for _ in range(G)] != list(prompts):
            raise ValueError("engine rollouts expect each prompt repeated num_generations times in a row")
        if trainer.state.global_step != state["synced_step"]:
            session.engine.sync_weights()  # the optimizer moved the LoRA since the last rollout
            state["synced_step"] = trainer.state.global_step
        sampling = SamplingConfig(n=G, temperature=cfg.temperature, top_p=1.0, max_tokens=cfg.max_tokens,
                                  seed=call_seed(seed, state["calls"]))
        state["calls"] += 1
        outputs = session.engine.generate(unique, sampling)
        prompt_ids, completion_ids = [], []
        for p, cands in zip(unique, outputs, strict=True):
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            for c in cands:
                ids = getattr(c, "token_ids", None)
                if ids is None:
                    ids = tok(c.text, add_special_tokens=False)["input_ids"]
                ids = list(ids)[: cfg.max_tokens]
                if c.finish_reason == "stop" and len(ids) < cfg.max_tokens:
                    ids.append(tok.eos_token_id)
                prompt_ids.append(p_ids)
                completion_ids.append(ids)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


# ------------------------------------------------------------------------------------------------- data


def prompt_rows(session, recipe: Recipe, prompts_path: Path | None, seed: int) -> list[dict]:
    """Training prompts: the Goldilocks set of the distill stage when given and not empty, else new
    generated puzzles (dynamic sampling then skips the ones the policy always or never solves)."""
    from fastnemo.distill import generate_puzzles, read_puzzles
    from fastnemo.progress import console

    cfg = recipe.grpo
    puzzles = read_puzzles(prompts_path) if prompts_path else []
    if prompts_path and not puzzles:
        console.print(f"[yellow]grpo: {prompts_path} holds no prompts (no pass rate fell in the Goldilocks "
                      "band); training on new generated puzzles instead")
    if not puzzles:
        puzzles = generate_puzzles(cfg.prompts, seed)
    elif len(puzzles) < cfg.batch_prompts:  # too few for one step: top up with new puzzles, said aloud
        console.print(f"[yellow]grpo: {len(puzzles)} Goldilocks prompt(s) < batch_prompts {cfg.batch_prompts}; "
                      "topped up with new generated puzzles")
        puzzles += generate_puzzles(cfg.batch_prompts - len(puzzles), derive_seed(seed, "grpo_top_up"))
    if cfg.prompts:
        puzzles = puzzles[: cfg.prompts]
    if not puzzles:
        raise ValueError("grpo: no training prompts (grpo.prompts is 0?)")
    return [{"prompt": session.chat_prompt(p.prompt), "answer": p.answer, "category": p.category, "id": p.id}
            for p in puzzles]


def make_trainer(session, cfg: GRPOConfig, rows: list[dict], out_dir: Path, seed: int = 0, log=None,
                 rollouts: str = "auto", micro_batch: int | None = None, max_refills: int | None = None,
                 rewards: tuple[list, list[float]] | None = None, updates_per_generation: int = 1,
                 server_args: dict | None = None, report_to: str = "none"):
    """The DAPO trainer on ``session.model``. ``rollouts``: "trl" (TRL generates with the model), "engine"
    (``session.engine`` via rollout_func) or "auto" (engine unless it is the hf engine).
    ``micro_batch``: completions per forward/backward (default: one group). ``rewards``: (functions,
    weights) instead of those ``cfg`` selects. ``updates_per_generation``: optimizer steps taken on one
    rollout batch (of that many times ``batch_prompts`` groups). At 1 every step is on-policy and the clip
    range never binds (TRL then skips the old log-probs); DAPO's clip-higher acts from 2 on."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from fastnemo.callbacks import RichTrainerCallback, SyncCheckpoints
    from fastnemo.distributed import world
    from fastnemo.patches.trl import ensure_fused_lm_head
    from fastnemo.sft import common_args

    ensure_fused_lm_head()
    from fastnemo.dapo import DAPOTrainer, TRLGRPOConfig
    G = cfg.group_size
    rows_per_step = cfg.batch_prompts * G
    micro = micro_batch or G
    if rows_per_step % micro:
        raise ValueError(f"grpo: batch_prompts x group_size = {rows_per_step} is not a multiple of the micro "
                         f"batch {micro}")
    n = world()
    if (rows_per_step // micro) % n:
        raise ValueError(f"grpo: {rows_per_step // micro} micro-batches per step do not split over {n} processes")
    dynamic = cfg.dynamic_sampling and n == 1
    funcs, weights = rewards or reward_funcs(cfg, eos_token_ids=[session.tokenizer.eos_token_id])
    args = TRLGRPOConfig(
        output_dir=str(out_dir),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        lr_scheduler_type="constant",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=rows_per_step // micro // n,
        steps_per_generation=rows_per_step // micro // n * updates_per_generation,
        num_generations=G,
        max_completion_length=cfg.max_tokens,
        temperature=cfg.temperature,
        top_p=1.0,
        epsilon=cfg.epsilon_low,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        mask_truncated_completions=cfg.overlong == "mask",
        reward_weights=weights,
        logging_steps=1,
        **(server_args or {}),
        **common_args(session, seed, cfg.save_steps, report_to, out_dir),
    )
    use_engine = not server_args and (rollouts == "engine" or (rollouts == "auto" and session.gen_cfg.engine != "hf"))
    from fastnemo.patches.trl import trl_accepts_lm_head  # TRL refuses a PEFT lm_head; lora trains it

    with warnings.catch_warnings(), trl_accepts_lm_head(session.model):
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")  # experimental: on purpose
        trainer = DAPOTrainer(
            model=session.model,
            reward_funcs=funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=session.tokenizer,
            callbacks=[RichTrainerCallback("grpo", on_log_fn=log), SyncCheckpoints()],
            rollout_func=engine_rollout(session, cfg, seed) if use_engine else None,
            refill_rows=rows if dynamic else None,
            dynamic_sampling=dynamic,
            max_refills=cfg.max_refills if max_refills is None else max_refills,
            refill_seed=seed,
        )
    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl carry the logs
    return trainer


def train(session, recipe: Recipe, out_dir: Path, prompts_path: Path | None = None, seed: int = 0,
          log=None, on_resume=None) -> dict:
    """DAPO on ``session.model`` in place; resumes from ``out_dir/checkpoints`` (``on_resume(step)`` is told
    its step first, 0 for a fresh start). Returns summary metrics, over the whole run when resumed."""
    from fastnemo.distributed import rollout_server_args
    from fastnemo.sft import checkpoint_step, last_checkpoint, resume, whole_run_loss

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    rows = prompt_rows(session, recipe, prompts_path, seed)
    trainer = make_trainer(session, recipe.grpo, rows, ckpt_dir, seed=seed, log=log,
                           micro_batch=recipe.grpo.micro_batch or None,
                           updates_per_generation=recipe.grpo.updates_per_generation,
                           server_args=rollout_server_args(recipe), report_to=recipe.report.to)
    session.engine.wake()
    t0 = time.time()
    from fastnemo.lora import lean_checkpoints

    ckpt = last_checkpoint(ckpt_dir, recipe.grpo.max_steps)
    if on_resume:
        on_resume(checkpoint_step(ckpt))
    with lean_checkpoints(session.model):
        global_step, history = resume(trainer, ckpt, recipe.grpo.max_steps)
    session.engine.sync_weights()
    steps = [r for r in history if "reward" in r]
    last = steps[-max(1, len(steps) // 5):]  # the last fifth of training: what the policy reached

    def mean(key):
        vals = [r[key] for r in last if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    return {
        "steps": global_step,
        "train_loss": whole_run_loss(history),
        "prompts": len(rows),
        "reward_end": mean("reward"),
        "dropped_share": mean("dynamic/dropped_share"),
        "length_mean_end": mean("completions/length_mean"),
        "seconds": round(time.time() - t0, 1),
    }
