"""DAPO on the session's one model, with TRL 1.15's ``GRPOTrainer``.

What TRL provides, set from ``GRPOConfig``: group sampling (``num_generations`` = group_size), the clipped
objective with DAPO's decoupled clip range (``epsilon`` 0.2 / ``epsilon_high`` 0.28), no KL term
(``beta`` 0: no reference model is built), token-level loss normalisation (``loss_type="dapo"``), and
masking of truncated completions out of the loss (``mask_truncated_completions``, overlong = "mask").

What this module adds (``DAPOTrainer``, a thin subclass):

- Dynamic sampling, which TRL 1.15 lacks: a group whose rewards are all equal has zero advantage and
  teaches nothing, so it is dropped and more prompts are drawn (from the same dataset) until the batch
  holds ``batch_prompts`` informative groups, for at most ``max_refills`` extra rounds; slots still empty
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

import collections
import json
import math
import random
import resource
import time
import warnings
from pathlib import Path

import click
import torch

from fastnemo.config import GRPOConfig, Recipe, SamplingConfig
from fastnemo.rewards import reward_funcs

# Refill rounds per optimizer step before dynamic sampling gives up and keeps zero-signal groups: bounds
# the cost of a batch where the policy solves everything or nothing.
MAX_REFILLS = 4


def _trl():
    # TRL's GRPO trainer warns on import-time experimental features; importing it lazily keeps `fastnemo`
    # commands that never train fast to start.
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    return TRLGRPOConfig, GRPOTrainer


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


def dapo_trainer_class():
    """``DAPOTrainer``: TRL's ``GRPOTrainer`` plus dynamic sampling and our metrics (built on first use, so
    importing this module does not import TRL)."""
    _, GRPOTrainer = _trl()

    class DAPOTrainer(GRPOTrainer):
        def __init__(self, *args, refill_rows=None, dynamic_sampling=True, max_refills=MAX_REFILLS,
                     refill_seed=0, **kwargs):
            super().__init__(*args, **kwargs)
            self.dynamic_sampling = dynamic_sampling
            self.max_refills = max_refills
            self._refill_rows = list(refill_rows or [])
            self._refill_rng = random.Random(refill_seed)
            self._refill_order: list[int] = []
            self._step_time = collections.defaultdict(float)
            self._cat_rewards = collections.defaultdict(list)
            self._lengths: list[int] = []

        # -- generation ---------------------------------------------------------------------------------
        def _generate(self, prompts):
            out = list(super()._generate(prompts))
            completion_ids = out[1]
            eos = set(self.eos_token_ids)
            # Decode again keeping special tokens (</think> may be one), end-of-turn stripped: the text the
            # engines return and the rewards expect.
            out[3] = [
                self._tokenizer.decode(ids[:-1] if ids and ids[-1] in eos else ids, skip_special_tokens=False)
                for ids in completion_ids
            ]
            self._lengths += [len(ids) for ids in completion_ids]
            return tuple(out)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._last_rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(1)
            for x, r in zip(inputs, self._last_rewards.tolist(), strict=True):
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
                scored = super()._generate_and_score_completions(batch)
                signal = group_signal(self._last_rewards, G).tolist()
                seen += len(signal)
                for g, ok in enumerate(signal):
                    rows = list(range(g * G, (g + 1) * G))
                    (kept if ok and len(kept) < want else spare).append((scored, rows))
                if len(kept) >= want or attempt == self.max_refills:
                    break
                need = want - len(kept)
                keep_rate = max(len(kept) / seen, 1 / want)
                batch = self._draw(min(want, max(need, math.ceil(need / keep_rate))))
            groups = kept + spare[: want - len(kept)]
            dropped = seen - len(kept)
            m = self._metrics["train"]
            m["dynamic/dropped_share"].append(dropped / seen)
            m["dynamic/refills"].append(attempt)
            m["dynamic/zero_signal_kept"].append(want - min(len(kept), want))
            # one entry per (batch, its rows): join rows from the same scored batch in one index list
            by_batch: dict[int, tuple[dict, list[int]]] = {}
            for scored, rows in groups:
                by_batch.setdefault(id(scored), (scored, []))[1].extend(rows)
            joined = join_batches(list(by_batch.values()), self._tokenizer.pad_token_id)
            self._step_time["generate"] += time.perf_counter() - t0
            return joined

        # -- bookkeeping --------------------------------------------------------------------------------
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

    return DAPOTrainer


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
                                  seed=seed * 1_000_003 + state["calls"])
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
    if cfg.prompts:
        puzzles = puzzles[: cfg.prompts]
    if not puzzles:
        raise ValueError("grpo: no training prompts (grpo.prompts is 0?)")
    return [{"prompt": session.chat_prompt(p.prompt), "answer": p.answer, "category": p.category, "id": p.id}
            for p in puzzles]


def make_trainer(session, cfg: GRPOConfig, rows: list[dict], out_dir: Path, seed: int = 0, log=None,
                 rollouts: str = "auto", micro_batch: int | None = None, max_refills: int = MAX_REFILLS,
                 rewards: tuple[list, list[float]] | None = None, updates_per_generation: int = 1):
    """The DAPO trainer on ``session.model``. ``rollouts``: "trl" (TRL generates with the model), "engine"
    (``session.engine`` via rollout_func) or "auto" (engine unless it is the hf engine).
    ``micro_batch``: completions per forward/backward (default: one group). ``rewards``: (functions,
    weights) instead of those ``cfg`` selects. ``updates_per_generation``: optimizer steps taken on one
    rollout batch (of that many times ``batch_prompts`` groups). At 1 every step is on-policy and the clip
    range never binds (TRL then skips the old log-probs); DAPO's clip-higher acts from 2 on."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from fastnemo.callbacks import RichTrainerCallback
    from fastnemo.sft import common_args
    from fastnemo.trl_compat import ensure_fused_lm_head

    ensure_fused_lm_head()
    TRLGRPOConfig, _ = _trl()
    G = cfg.group_size
    rows_per_step = cfg.batch_prompts * G
    micro = micro_batch or G
    if rows_per_step % micro:
        raise ValueError(f"grpo: batch_prompts x group_size = {rows_per_step} is not a multiple of the micro "
                         f"batch {micro}")
    funcs, weights = rewards or reward_funcs(cfg, eos_token_ids=[session.tokenizer.eos_token_id])
    args = TRLGRPOConfig(
        output_dir=str(out_dir),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        lr_scheduler_type="constant",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=rows_per_step // micro,
        steps_per_generation=rows_per_step // micro * updates_per_generation,
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
        **common_args(session, seed, cfg.save_steps),
    )
    use_engine = rollouts == "engine" or (rollouts == "auto" and session.gen_cfg.engine != "hf")
    from fastnemo.lora import trl_accepts_lm_head  # TRL refuses a PEFT lm_head; fastnemo.lora trains it

    with warnings.catch_warnings(), trl_accepts_lm_head(session.model):
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")  # experimental: on purpose
        trainer = dapo_trainer_class()(
            model=session.model,
            reward_funcs=funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=session.tokenizer,
            callbacks=[RichTrainerCallback("grpo", on_log_fn=log)],
            rollout_func=engine_rollout(session, cfg, seed) if use_engine else None,
            refill_rows=rows if cfg.dynamic_sampling else None,
            dynamic_sampling=cfg.dynamic_sampling,
            max_refills=max_refills,
            refill_seed=seed,
        )
    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl carry the logs
    return trainer


def train(session, recipe: Recipe, out_dir: Path, prompts_path: Path | None = None, seed: int = 0,
          log=None) -> dict:
    """DAPO on ``session.model`` in place; resumes from ``out_dir/checkpoints``. Returns summary metrics."""
    from fastnemo.sft import last_checkpoint

    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoints"
    rows = prompt_rows(session, recipe, prompts_path, seed)
    history = []

    def log_and_keep(rec):
        history.append(rec)
        if log:
            log(rec)

    trainer = make_trainer(session, recipe.grpo, rows, ckpt, seed=seed, log=log_and_keep,
                           micro_batch=recipe.grpo.micro_batch or None,
                           updates_per_generation=recipe.grpo.updates_per_generation)
    session.engine.wake()
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(ckpt))
    session.engine.sync_weights()
    steps = [r for r in history if "reward" in r]
    last = steps[-max(1, len(steps) // 5):]  # the last fifth of training: what the policy reached

    def mean(key):
        vals = [r[key] for r in last if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    return {
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "prompts": len(rows),
        "reward_end": mean("reward"),
        "dropped_share": mean("dynamic/dropped_share"),
        "length_mean_end": mean("completions/length_mean"),
        "seconds": round(time.time() - t0, 1),
    }


# ------------------------------------------------------------------------------------------------- cli


@click.command("grpo")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False),
              help="Base model folder (config.json, weights, tokenizer).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="Start from this LoRA adapter (usually the SFT one).")
@click.option("--backend", type=click.Choice(["hf", "unsloth"]), default="hf", show_default=True)
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False),
              help="Training prompts (goldilocks.jsonl from distill, or a CSV id,prompt,answer); "
                   "default: new generated puzzles.")
@click.option("--prompts", default=2000, show_default=True, help="Use at most N prompts.")
@click.option("--steps", default=100, show_default=True, help="Optimizer steps.")
@click.option("--lr", default=1e-6, show_default=True)
@click.option("--group-size", default=8, show_default=True, type=click.IntRange(2, 16))
@click.option("--batch-prompts", default=4, show_default=True, help="Informative groups per step.")
@click.option("--max-tokens", default=7680, show_default=True)
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--overlong", type=click.Choice(["mask", "penalty"]), default="mask", show_default=True)
@click.option("--length-reward", type=click.Choice(["none", "cosine", "penalty"]), default="none",
              show_default=True)
@click.option("--format-reward", default=0.0, show_default=True, help="Weight of the format reward (0: off).")
@click.option("--no-dynamic-sampling", is_flag=True, help="Keep groups whose rewards are all equal.")
@click.option("--rank", default=32, show_default=True, type=click.IntRange(1, 32),
              help="LoRA rank of a fresh adapter (the competition accepts at most 32).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (adapter/, checkpoints/, metrics.jsonl). Re-running resumes.")
def grpo_command(model_path, adapter, backend, engine, prompts_file, prompts, steps, lr, group_size,
                 batch_prompts, max_tokens, temperature, overlong, length_reward, format_reward,
                 no_dynamic_sampling, rank, seed, out):
    """DAPO (GRPO with DAPO's settings and dynamic sampling) on a LoRA; writes OUT/adapter."""
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig
    from fastnemo.session import ModelSession

    recipe = Recipe(
        model=ModelConfig(path=model_path, backend=backend),
        generation=GenerationConfig(engine=engine),
        grpo=GRPOConfig(prompts=prompts, max_steps=steps, learning_rate=lr, group_size=group_size,
                        batch_prompts=batch_prompts, max_tokens=max_tokens, temperature=temperature,
                        overlong=overlong, length_reward=length_reward, format_reward=format_reward,
                        dynamic_sampling=not no_dynamic_sampling),
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    session = ModelSession.load(model_path, recipe.model, LoraConfig(rank=rank, alpha=rank), recipe.generation,
                                adapter=adapter)

    def log(rec):
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    summary = train(session, recipe, out, prompts_path=Path(prompts_file) if prompts_file else None, seed=seed,
                    log=log)
    session.save_adapter(out / "adapter")
    click.echo(json.dumps(summary))
