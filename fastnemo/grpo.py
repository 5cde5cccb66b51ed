"""DAPO on the session's one model, with TRL 1.15's ``GRPOTrainer``.

What TRL provides, set from ``GRPOConfig``: group sampling (``num_generations`` = group_size), the clipped
objective with DAPO's decoupled clip range (``epsilon`` 0.2 / ``epsilon_high`` 0.28), no KL term
(``beta`` 0: no reference model is built), token-level loss normalisation (``loss_type="dapo"``), and
masking of truncated completions out of the loss (``mask_truncated_completions``, overlong = "mask").

What fastnemo adds (``fastnemo.dapo.DAPOTrainer``, a thin subclass in its own module, imported when a
trainer is made, with the batch joining it does; this module keeps the rollouts, the data and ``train``):

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

import time
import warnings
from pathlib import Path

from fastnemo.config import GRPOConfig, Recipe, SamplingConfig, micro_batches
from fastnemo.rewards import reward_funcs
from fastnemo.seeds import call_seed, derive_seed

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

    from fastnemo.distributed import world
    from fastnemo.patches.trl import ensure_fused_lm_head
    from fastnemo.sft import build_trainer, common_args

    ensure_fused_lm_head()
    from fastnemo.dapo import DAPOTrainer, TRLGRPOConfig
    G = cfg.group_size
    micro, n = micro_batch or G, world()
    per_process = micro_batches(cfg.batch_prompts * G, micro, n)
    dynamic = cfg.dynamic_sampling and n == 1
    funcs, weights = rewards or reward_funcs(cfg, eos_token_ids=[session.tokenizer.eos_token_id])
    args = TRLGRPOConfig(
        output_dir=str(out_dir),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        lr_scheduler_type="constant",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_process,
        steps_per_generation=per_process * updates_per_generation,
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")  # experimental: on purpose
        return build_trainer(
            DAPOTrainer, session, args, "grpo", log,
            reward_funcs=funcs,
            train_dataset=Dataset.from_list(rows),
            rollout_func=engine_rollout(session, cfg, seed) if use_engine else None,
            refill_rows=rows if dynamic else None,
            dynamic_sampling=dynamic,
            max_refills=cfg.max_refills if max_refills is None else max_refills,
            refill_seed=seed,
        )


def train(session, recipe: Recipe, out_dir: Path, prompts_path: Path | None = None, seed: int = 0,
          log=None, on_resume=None) -> dict:
    """DAPO on ``session.model`` in place; resumes from ``out_dir/checkpoints`` (``on_resume(step)`` is told
    its step first, 0 for a fresh start). Returns summary metrics, over the whole run when resumed."""
    from fastnemo.distributed import rollout_server_args
    from fastnemo.sft import train_resumed, whole_run_loss

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    rows = prompt_rows(session, recipe, prompts_path, seed)
    trainer = make_trainer(session, recipe.grpo, rows, ckpt_dir, seed=seed, log=log,
                           micro_batch=recipe.grpo.micro_batch or None,
                           updates_per_generation=recipe.grpo.updates_per_generation,
                           server_args=rollout_server_args(recipe), report_to=recipe.report.to)
    session.engine.wake()
    t0 = time.time()
    global_step, history = train_resumed(trainer, session, ckpt_dir, recipe.grpo.max_steps, on_resume)
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
