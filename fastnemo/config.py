"""The recipe: one TOML file, typed by the dataclasses below. Every field's default, help text, choices
(``Literal``) and bounds are declared here, where it is defined (``key(...)``), and each section checks
itself when it is built (``Section.__post_init__``): a recipe file, a ``key=value`` override on the command
line and a config built in Python go through the same checks. Unknown keys and wrong types are errors that
name the file and the key. The README's recipe table is generated from these fields (``recipe_table``).

A recipe reads top to bottom: what model, which LoRA, what data, then one section per stage, and
``stages`` says which run, in order. ``rounds`` repeats the round stages (see ``fastnemo.recipe``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import ClassVar, Literal

from fastnemo.targets import DEFAULT_TARGETS, MAX_LORA_RANK, check_lora
from puzzles.files import InputError

MAX_INT = 2**63 - 1  # every int key ends up in numpy or torch (int64)
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


Stage = Literal["recall", "data", "sft", "eval", "distill", "grpo", "pack"]
STAGES = typing.get_args(Stage)


class RecipeError(InputError):
    """A recipe that cannot be run: names the file and the key."""


def key(default, help: str, *, ge=None, gt=None, le=None):
    """A recipe key: its default, its help text and its bounds, all in one place (the checks, the CLI's help
    and the README's recipe table read them from here). A list default is copied for every instance."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls, help: str):
    """A nested table of the recipe (``[lora]``, ``[eval.sampling]``)."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_type(value, hint, where: str):
    """``value`` as the type ``hint`` says (an int is accepted for a float), or a RecipeError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) or value not in allowed:
            raise RecipeError(f"{where} must be one of {allowed}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(hint)
        return {k: _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_INT:
            raise RecipeError(f"{where}: {value} is out of range")
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise RecipeError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"[:300])
    if hint is float and not math.isfinite(value):  # a NaN learning rate trains a NaN adapter for hours
        raise RecipeError(f"{where} must be a finite number, got {value}")
    if hint is int and abs(value) > MAX_INT:  # ints end up in numpy / torch (seeds, sizes): int64 at most
        raise RecipeError(f"{where}: {value} is out of range (|value| <= 2**63 - 1)")
    return value


def _check_bounds(value, meta, where: str) -> None:
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    if ge is not None and le is not None and not ge <= value <= le:
        raise RecipeError(f"{where} must be in {ge}..{le}, got {value}")
    if ge is not None and value < ge:
        raise RecipeError(f"{where} must be >= {ge}, got {value}")
    if gt is not None and value <= gt:
        raise RecipeError(f"{where} must be > {gt}, got {value}")
    if le is not None and value > le:
        raise RecipeError(f"{where} must be <= {le}, got {value}")


class Section:
    """A recipe section: on construction every field is checked against its type, its ``Literal`` choices and
    its bounds, then ``check`` runs the section's cross-field rules. Errors name the key (``lora.rank``)."""

    KEY: ClassVar[str] = ""  # where the section sits in a recipe ("" = the top level)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            hint, value, where = _hints(type(self))[f.name], getattr(self, f.name), self.where(f.name)
            if dataclasses.is_dataclass(hint):
                if not isinstance(value, hint):
                    raise RecipeError(f"{where}: expected a table, got {value!r}")
                continue
            value = _check_type(value, hint, where)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _check_bounds(value, f.metadata, where)
            object.__setattr__(self, f.name, value)
        self.check()

    def where(self, name: str) -> str:
        return f"{self.KEY}.{name}" if self.KEY else name

    def check(self) -> None:
        """Rules between fields of this section (none by default)."""


@dataclasses.dataclass
class ModelConfig(Section):
    KEY: ClassVar[str] = "model"
    path: str = key("models/tiny-nemotron", "Local directory with config.json, weights and tokenizer. Relative "
                    "paths resolve against the recipe.")
    base_model_name: str = key("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "Written as base_model_name_or_path "
                               "in adapter_config.json: the model the adapter is scored on.")
    tiny: bool = key(False, "Build a tiny random nemotron_h model at `path` when it is absent (CPU smoke runs "
                     "and tests).")
    backend: Literal["hf", "unsloth"] = key("hf", "\"hf\" (transformers + PEFT) or \"unsloth\" (Unsloth's LoRA "
                                            "kernels; GPU only).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = key(
        "auto", "\"auto\" is bfloat16 on GPU, float32 on CPU.")
    load_in_4bit: bool = key(False, "Quantize the base weights with bitsandbytes (GPU only; backend \"unsloth\" "
                             "only: the hf backend loads 16-bit weights).")
    experts_implementation: Literal["auto", "grouped_mm", "eager"] = key(
        "auto", "MoE experts kernel: \"auto\" (transformers' choice: grouped_mm where it can dispatch, else "
        "eager), \"grouped_mm\" (4x eager on the H100, measured) or \"eager\"; \"batched_mm\" ran out of memory "
        "there.")
    max_seq_length: int = key(8192, "Longest prompt + completion, in tokens (the competition's max_model_len is "
                              "8192).", ge=1)
    gradient_checkpointing: bool = key(True, "Recompute activations in backward: the memory that makes 8k-token "
                                       "SFT fit on one H100.")

    def check(self):
        if self.load_in_4bit and self.backend == "hf":
            raise RecipeError("model.load_in_4bit needs model.backend = 'unsloth': the hf backend loads 16-bit "
                              "weights and would ignore it")


@dataclasses.dataclass
class LoraConfig(Section):
    KEY: ClassVar[str] = "lora"
    rank: int = key(32, "LoRA rank r; the competition accepts at most 32.", ge=1, le=MAX_LORA_RANK)
    alpha: int = key(32, "LoRA scaling numerator: the update is scaled by alpha / rank.", ge=1)
    dropout: float = key(0.0, "Dropout on the LoRA input.", ge=0.0, le=1.0)
    target_modules: list[str] = key(list(DEFAULT_TARGETS), "Module names to adapt; must exist in the model "
                                    "(checked at load).")
    train_experts: bool = key(
        False, "Also put LoRA on all routed experts' up/down_proj (computed per expert on the routed tokens, "
        "fastnemo.lora; packed as vLLM's per-expert keys): ~866 M more LoRA parameters at rank 32. On the full "
        "model with optimizer_8bit + bf16_weights it peaks at 67.6 GiB with sft.token_budget = 8192, 71.2 at 16384 (measured, "
        "backend hf; recipes/winners.toml). Off by default: the Unsloth backend's experts path is untested.")
    optimizer_8bit: bool = key(False, "bitsandbytes 8-bit AdamW (GPU): 2 bytes of optimizer state per LoRA "
                               "parameter instead of 8.")
    bf16_weights: bool = key(False, "Keep LoRA weights (and grads) in the model's bf16 instead of PEFT's fp32 "
                             "upcast: 4 bytes a parameter instead of 8.")

    def check(self):
        try:  # vLLM-servable targets only (lm_head and out_proj train there)
            check_lora(self.target_modules, self.rank)
        except ValueError as e:
            raise RecipeError(str(e)) from None


@dataclasses.dataclass
class SamplingConfig(Section):
    """Generation settings. The defaults are the competition's scoring settings (greedy, 7,680 tokens)."""

    KEY: ClassVar[str] = "eval.sampling"
    n: int = key(1, "Completions per prompt.", ge=1)
    temperature: float = key(0.0, "Sampling temperature (0 = greedy, as the competition scores).", ge=0.0)
    top_p: float = key(1.0, "Nucleus sampling mass.", gt=0.0, le=1.0)
    max_tokens: int = key(7680, "Most new tokens per completion (the competition's 7,680).", ge=1)
    seed: int = key(0, "Sampling seed.", ge=0, le=MAX_SEED)


@dataclasses.dataclass
class GenerationConfig(Section):
    KEY: ClassVar[str] = "generation"
    engine: Literal["hf", "vllm"] = key("hf", "\"hf\" (transformers generate on the training model) or \"vllm\" "
                                        "(in-process, colocated).")
    batch_size: int = key(64, "Prompts per generate call (the competition runs max_num_seqs 64).", ge=1)
    gpu_memory_utilization: float = key(
        0.35, "vLLM's share of the GPU's memory (its weights, KV cache and graphs) when colocated with "
        "training. Backend \"unsloth\" shares the weights with the trainer and counts them here: the full "
        "model's 59 GiB need >= 0.85 of an 80 GB card; backend \"hf\" gives vLLM its own copy.",
        gt=0.0, le=1.0)
    max_model_len: int = key(8192, "vLLM's longest prompt + completion, in tokens.", ge=1)
    weight_sync: Literal["merge", "lora"] = key(
        "merge", "How a plain-vLLM engine (backend \"hf\") gets the trained LoRA: \"merge\" sends every weight "
        "with the LoRA merged in, from memory; \"lora\" writes the adapter and serves it as a vLLM LoRA (both "
        "checked on the GPU lane: greedy agreement, sync, sleep/wake). Unsloth's engine shares the weights.")


@dataclasses.dataclass
class DataConfig(Section):
    KEY: ClassVar[str] = "data"
    n: int = key(2000, "Puzzles to generate for SFT (solver traces).", ge=0)
    like: str = key("", "Reference CSV whose category shares and difficulty the mix matches (\"\" = uniform).")
    floor: int = key(0, "Minimum rows per category.", ge=0)
    keep_guessed: list[str] = key(
        ["unit_conversion", "gravity"], "Categories whose guessed solver rows are kept when exactly the "
        "generator's answer: their rounded examples leave only the last digit open; dropping them would skew the "
        "mix toward small answers.")
    workers: int = key(2, "Processes for the mix build.", ge=1, le=64)
    path: str = key("", "Use this existing SFT JSONL instead of generating (\"\" = generate).")
    shares: dict[str, float] = key({}, "Per-category share overrides, e.g. {equations = 0.25}: renormalised "
                                   "with the categories left out, which keep the `like` file's real shares (the "
                                   "default: {} keeps them all).")
    drill_share: float = key(0.0, "Fraction of the `n` rows that are recall drills: the memory traces recall "
                             "from. The cipher word list (one row a length, 9 rows) and the cryptarithm catalog "
                             "(signature -> candidates, puzzles.cryptarithm) for the rest.", ge=0.0)

    def check(self):
        from puzzles.base import CATEGORIES

        bad = sorted(set(self.shares) - set(CATEGORIES))
        if bad or any(v < 0 for v in self.shares.values()):
            raise RecipeError(f"data.shares: keys must be categories {CATEGORIES} with shares >= 0, "
                              f"got {self.shares}")
        if not self.drill_share < 1:
            raise RecipeError(f"data.drill_share must be in [0, 1), got {self.drill_share}")


@dataclasses.dataclass
class SFTConfig(Section):
    KEY: ClassVar[str] = "sft"
    learning_rate: float = key(2e-4, "Peak learning rate (AdamW).", gt=0.0)
    epochs: float = key(1.0, "Passes over the SFT data (when max_steps is -1).", gt=0.0)
    max_steps: int = key(-1, "Stop after this many optimizer steps (-1 = run the epochs).", ge=-1)
    batch_size: int = key(1, "Rows per device per forward/backward.", ge=1)
    grad_accum: int = key(8, "Forward/backward passes per optimizer step.", ge=1)
    max_length: int = key(8192, "Longest SFT row in tokens; longer rows are truncated.", ge=1)
    token_budget: int = key(0, "Token-budget batching (fastnemo/batching.py): batches of at most this many "
                            "padded tokens, rows grouped by length, no packing; batch_size is then ignored. 0 = "
                            "fixed batches of batch_size rows.", ge=0)
    warmup: float = key(0.03, "Warm-up: a fraction of the steps when < 1, else a number of steps.", ge=0.0)
    save_steps: int = key(200, "Trainer checkpoint every N steps: an interrupted SFT resumes from the last one.",
                          ge=1)
    logging_steps: int = key(10, "Log loss and throughput every N steps.", ge=1)

    def check(self):
        if self.max_steps == 0:
            raise RecipeError("sft.max_steps must be -1 (run the epochs) or >= 1, got 0")


@dataclasses.dataclass
class RecallConfig(Section):
    """The recall stage (``fastnemo.recall``): the drills alone, before the traces (3rd place's stage 1: recall
    drills only, ~16 requests packed per sample, 5 epochs, lr 2e-4 -> 97.1 % exact recall on 1,000 held-out
    signatures; its two-stage run beat direct training on the same mix, private 0.900 vs 0.888). Each drilled
    entry (``puzzles.recall``: the cipher word lists, the cryptarithm catalog by prior mass) is seen
    ``exposures`` times; requests are packed into rows of at most ``sft.max_length`` tokens with the loss on
    every answer. Batch size, accumulation, warm-up and checkpoints are the ``[sft]`` ones. The later SFT
    replays drills through ``data.drill_share`` (3rd place: 3,000 rows). It runs in the first round only."""

    KEY: ClassVar[str] = "recall"
    exposures: int = key(5, "Times each drilled entry is trained (one shuffled pass over the entries each; the "
                         "anchor's 5 epochs). `fastnemo plan` prints the tokens and hours.", ge=1)
    requests_per_row: int = key(16, "Most drill requests packed into one training row (the anchor's ~16); a row "
                                "also stops before `sft.max_length` tokens. An entry longer than that alone is "
                                "refused, naming it.", ge=1)
    coverage: float = key(1.0, "Drill only the signatures that hold this share of the catalog's prior mass (the "
                          "word lists always); bench/recall_coverage.py measures what a share gives up on the "
                          "real cryptarithms.", gt=0.0, le=1.0)
    limit: int = key(0, "Drill at most this many entries of that prefix (0 = all): small sub-catalogs for tests "
                     "and smoke runs.", ge=0)
    learning_rate: float = key(2e-4, "Peak learning rate of the recall stage (the anchor's 2e-4).", gt=0.0)
    max_hours: float = key(0.0, "Refuse a recall stage that `fastnemo plan` says takes longer than this on the "
                           "recipe's backend (0 = no limit).", ge=0.0)
    eval_samples: int = key(48, "Every eval also measures exact greedy recall on this many drilled entries, "
                            "a fixed sample spread over kinds and entry lengths (0 = off).", ge=0)


@dataclasses.dataclass
class EvalConfig(Section):
    KEY: ClassVar[str] = "eval"
    data: str = key("", "Validation CSV (id,prompt,answer): the user's train.csv. \"\" = a held-out generated "
                    "set.")
    limit: int = key(0, "Evaluate at most this many rows, stratified by category (0 = all).", ge=0)
    n_generated: int = key(120, "Size of the held-out generated set when `data` is empty.", ge=1)
    sampling: SamplingConfig = section(SamplingConfig, "How evaluation generates (the competition's settings).")
    trace_set: str = key("", "SFT JSONL of held-out traces (e.g. `fastnemo data solve --traces` of train.csv) "
                         "that each eval also scores by teacher forcing (`fastnemo traces score`): per category "
                         "mean/min token log-prob, share under ln 2, first greedy divergence, logged to "
                         "metrics.jsonl. \"\" = off.")
    trace_limit: int = key(240, "Score at most this many rows of `trace_set`, the same share of each category "
                           "(0 = all).", ge=0)
    trace_batch_size: int = key(4, "Rows per teacher-forced forward pass (its logits are rows x length x vocab).",
                                ge=1)
    runner: Literal["auto", "harness", "engine"] = key(
        "auto", "What generates: \"harness\" = the competition's harness (fastnemo/score.py: its vLLM "
        "arguments, prompt, greedy sampling and metric) on the stage's saved adapter, in a child process after "
        "the training model is freed (the next training stage reloads it from the newest adapter); \"engine\" = "
        "the session's generation engine (generation.engine); \"auto\" = the harness where vllm imports and "
        "CUDA is available (with backend \"unsloth\" + engine \"vllm\": whichever `fastnemo plan` rates faster), "
        "else the engine (CPU runs, tests). The choice and why are printed and kept in the stage summary.")
    gpu_memory_utilization: float = key(
        0.0, "The harness's vLLM memory share. 0 = chosen from the card: the scorer's 0.85 is a share of a 96 GB "
        "card (81.6 GB), so the share is raised to give that much, within 0.85..0.92 (0.92 on an 80 GB H100, "
        "which leaves its 59 GiB of weights a 310 k-token KV pool, measured); printed as a deviation when it is "
        "not 0.85. FASTNEMO_GPU_CAP_GIB=79.2 treats a bigger card as that many GiB (the GPU test lane).",
        ge=0.0, le=0.98)
    max_num_seqs: int = key(
        256, "The harness's concurrent sequences (the scorer runs 64). 256 validates ~1.6x faster (measured on an "
        "H100: the whole 9,500-row train.csv in ~39 min, ~58 at 64). Greedy outputs in vLLM depend on the batch "
        "around them (vllm#57267), at 64 as at 256: the scorer's batches hold other puzzles than yours, so no "
        "local run repeats its outputs token for token, and the known causes (the order of floating-point sums) "
        "flip near-ties both ways. Count the flips on your own checkpoint with `fastnemo score --max-num-seqs "
        "256 --compare` (README, \"Speed\"); set 64 if they lean one way. Printed as a deviation.", ge=1)


@dataclasses.dataclass
class DistillConfig(Section):
    KEY: ClassVar[str] = "distill"
    prompts: int = key(2000, "Prompts to sample (new generated puzzles unless `data` is set; caps `data`).", ge=0)
    data: str = key("", "Distill on these puzzles instead (CSV id,prompt,answer or JSONL) (\"\" = generate).")
    k: int = key(8, "Candidates per prompt.", ge=1)
    keep: int = key(1, "Verified traces kept per prompt (shortest first).", ge=1)
    temperature: float = key(0.7, "Sampling temperature of the candidates.", ge=0.0)
    max_tokens: int = key(7680, "Most new tokens per candidate.", ge=1)
    goldilocks_low: float = key(0.2, "Lowest pass rate of a prompt that goes to the next RL stage.", ge=0.0,
                                le=1.0)
    goldilocks_high: float = key(0.8, "Highest pass rate of a prompt that goes to the next RL stage.", ge=0.0,
                                 le=1.0)
    carry_share: float = key(0.3, "Share of the previous SFT data mixed into the next SFT set.", ge=0.0, le=1.0)
    runner: Literal["auto", "harness", "engine"] = key(
        "auto", "What samples: \"harness\" = a vLLM child process (the harness's engine, eval.gpu_memory_"
        "utilization and eval.max_num_seqs) on the newest adapter, after the training model is freed; "
        "\"engine\" = the session's generation engine; \"auto\" = the harness with backend \"hf\" where vllm "
        "imports and CUDA is available, else the engine (backend \"unsloth\" samples on its resident vLLM).")

    def check(self):
        if not self.goldilocks_low <= self.goldilocks_high:
            raise RecipeError(f"distill.goldilocks_low/high must satisfy 0 <= low <= high <= 1, "
                              f"got {self.goldilocks_low}, {self.goldilocks_high}")


@dataclasses.dataclass
class GRPOConfig(Section):
    KEY: ClassVar[str] = "grpo"
    prompts: int = key(2000, "Training prompts (the distill stage's Goldilocks set, else new generated "
                       "puzzles), at most this many.", ge=0)
    max_steps: int = key(100, "Optimizer steps.", ge=1)
    learning_rate: float = key(1e-6, "Learning rate (constant).", gt=0.0)
    group_size: int = key(8, "Completions per prompt.", ge=2, le=16)
    batch_prompts: int = key(4, "Prompts per optimizer step (after dynamic sampling refills the batch).", ge=1)
    epsilon_low: float = key(0.2, "Lower clip range of the ratio pi/pi_old.", ge=0.0)
    epsilon_high: float = key(0.28, "Upper clip range (DAPO's clip-higher).", ge=0.0)
    beta: float = key(0.0, "KL coefficient (0 = no reference model is built).", ge=0.0)
    loss_type: Literal["dapo", "bnpo", "dr_grpo", "grpo", "cispo", "sapo"] = key(
        "dapo", "Token-level loss normalisation (TRL loss_type).")
    max_tokens: int = key(7680, "Most new tokens per completion.", ge=1)
    temperature: float = key(1.0, "Sampling temperature of the rollouts.", gt=0.0)
    overlong: Literal["mask", "penalty"] = key("mask", "\"mask\" truncated completions out of the loss, or "
                                               "\"penalty\" (soft length penalty).")
    dynamic_sampling: bool = key(True, "Drop groups whose rewards are all equal, refill until the batch is full.")
    max_refills: int = key(4, "Refill rounds per optimizer step before dynamic sampling gives up and keeps "
                           "zero-signal groups: bounds the cost of a batch the policy solves always or never.",
                           ge=0)
    updates_per_generation: int = key(
        1, "Optimizer steps per rollout batch. At 1 every step is on-policy and the clip range never binds; at "
        "2+ the later steps are off-policy and DAPO's clip-higher takes effect.", ge=1)
    micro_batch: int = key(0, "Completions per forward/backward (0 = one group). Lower it when a group of long "
                           "completions OOMs.", ge=0)
    format_reward: float = key(0.0, "Weight of the format reward (exactly one final box after the reasoning); "
                               "0 = off.", ge=0.0)
    length_reward: Literal["none", "cosine", "penalty"] = key(
        "none", "\"none\", \"cosine\" (cosine-scaled correctness) or \"penalty\" (length penalty).")
    save_steps: int = key(25, "Trainer checkpoint every N steps.", ge=1)

    def check(self):
        micro_batches(self.batch_prompts * self.group_size, self.micro_batch or self.group_size)


def micro_batches(rows: int, micro: int, n: int = 1) -> int:
    """Forward/backward passes each of ``n`` training processes takes for one DAPO step of ``rows``
    completions in micro batches of ``micro``; RecipeError when they do not split evenly."""
    if rows % micro:
        raise RecipeError(f"grpo.micro_batch {micro} must divide batch_prompts x group_size = {rows}")
    if (rows // micro) % n:
        raise RecipeError(f"grpo: batch_prompts x group_size / micro batch = {rows // micro} micro-batches per "
                          f"step do not split over {n} training processes (hardware.gpus)")
    return rows // micro // n


def per_rank(batch_size: int, grad_accum: int, n: int, what: str = "sft") -> tuple[int, int]:
    """(per-device batch, accumulation steps) on each of ``n`` processes for the global batch
    ``batch_size x grad_accum``: the largest per-device batch not above ``batch_size`` that splits it."""
    total = batch_size * grad_accum
    if total % n:
        raise RecipeError(f"{what}.batch_size x grad_accum = {total} rows per step does not split over {n} "
                          "training processes (hardware.gpus): make it a multiple")
    local = math.gcd(batch_size, total // n)
    return local, total // n // local


@dataclasses.dataclass
class HardwareConfig(Section):
    """How many accelerators of ONE host a run uses (``fastnemo.distributed``). With ``gpus`` > 1,
    ``fastnemo recipe`` re-launches itself as that many processes (torch.distributed, accelerate's DDP inside
    the trainers): each process holds the base model, the LoRA and one generation engine; eval and distill
    shard the prompts over the processes and merge the results in order; SFT and DAPO train data-parallel.
    Batch sizes in the recipe stay GLOBAL (what one GPU would step on), so 1 and N GPUs train the same way;
    each must split evenly over the processes. On a machine without CUDA the processes are CPU processes
    (gloo backend): allowed up to the CPU cores, for tests and smoke runs."""

    KEY: ClassVar[str] = "hardware"
    gpus: int = key(1, "Processes, one per GPU (1 = the one-process path, unchanged).", ge=1)
    rollout_gpus: int = key(0, "DAPO only, for when colocated rollouts do not fit: this many of the `gpus` serve "
                            "TRL's vLLM server (data-parallel over them) and the rest train; 0 = rollouts in the "
                            "training processes. GPU only.", ge=0)
    rollout_port: int = key(8000, "Port of that vLLM server on localhost.", ge=1, le=65535)

    @property
    def train_processes(self) -> int:
        """The processes that train (the rest serve DAPO's rollouts)."""
        return self.gpus - self.rollout_gpus

    def check(self):
        if not 0 <= self.rollout_gpus < self.gpus:
            raise RecipeError(f"hardware.rollout_gpus must be in 0..gpus-1 = {self.gpus - 1} (some GPU must "
                              f"train), got {self.rollout_gpus}")


@dataclasses.dataclass
class ReportConfig(Section):
    """Where training and evaluation metrics go besides metrics.jsonl (``fastnemo.tracking``)."""

    KEY: ClassVar[str] = "report"
    to: Literal["none", "tensorboard", "wandb", "trackio"] = key(
        "none", "Experiment tracker: TRL's report_to for SFT and DAPO, and the evaluations logged there too "
        "(tensorboard: events in each stage's tb/ and in run_dir/tb). Its package must be installed.")


@dataclasses.dataclass
class Recipe(Section):
    name: str = key("run", "The run's name (printed, and in the manifest).")
    run_dir: str = key("runs/run", "Run directory (relative to the recipe file). Re-running the recipe resumes "
                       "it.")
    seed: int = key(0, "Seed of data generation, sampling and training.", ge=0, le=MAX_SEED)
    stages: list[Stage] = key(["data", "sft", "eval", "pack"], "Stages to run, in order, each round; pack runs "
                              "once, at the end.")
    rounds: int = key(1, "Repeat the stages (all but pack) this many times; pack runs once, after the last "
                      "round.", ge=1)
    until_plateau: int = key(0, "Stop before `rounds` when the best validation score has not improved for this "
                             "many rounds (0 = off).", ge=0)
    start_from: str = key("", "A previous run directory (its best checkpoint and its SFT data) or an adapter "
                          "folder to start from.")
    model: ModelConfig = section(ModelConfig, "The base model and how it is loaded.")
    lora: LoraConfig = section(LoraConfig, "The adapter that is trained and submitted.")
    generation: GenerationConfig = section(GenerationConfig, "The generation engine (eval, distill, rollouts).")
    recall: RecallConfig = section(RecallConfig, "The recall stage: drills alone, sized by exposures.")
    data: DataConfig = section(DataConfig, "The SFT data of the data stage.")
    sft: SFTConfig = section(SFTConfig, "Supervised fine-tuning.")
    eval: EvalConfig = section(EvalConfig, "Validation with the competition's metric.")
    distill: DistillConfig = section(DistillConfig, "Self-distillation: sample, verify, keep.")
    grpo: GRPOConfig = section(GRPOConfig, "DAPO (TRL's GRPOTrainer with DAPO's settings and dynamic sampling).")
    hardware: HardwareConfig = section(HardwareConfig, "GPUs of one host (data-parallel processes).")
    report: ReportConfig = section(ReportConfig, "Experiment tracker.")
    source: str = key("", "The recipe file this was read from (set by load_recipe; not a recipe key).")
    # Not keys either, so no dataclass fields (config.json and the provenance fingerprints hold the keys alone):
    # ``overrides``, the command line's KEY=VALUE (load_recipe), which a multi-process launch passes on, and
    # ``paths`` (RecipePaths), every path key resolved once, when the recipe is built.
    overrides: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        super().__post_init__()
        self.paths = RecipePaths.of(self)

    def check(self):
        trained, seen = "base", set()
        for stage in self.stages:  # an evaluation needs something new to score
            if stage == "eval":
                if trained in seen:
                    raise RecipeError(f"stages: two 'eval' after the same training stage ({trained!r})")
                seen.add(trained)
            elif stage in ("recall", "sft", "grpo"):
                trained = stage
        once = [s for s in self.stages if s in ("recall", "sft", "grpo", "data", "distill")]
        if len(once) != len(set(once)):
            raise RecipeError("stages: recall, data, sft, distill and grpo may each appear once per round")
        if "recall" in self.stages:
            from puzzles.cipher import drill_rows

            # coverage > 0 always keeps the likeliest signature; only a limit inside the word lists leaves none
            if self.recall.limit and self.recall.limit <= len(drill_rows()):
                raise RecipeError(f"recall.limit = {self.recall.limit} leaves no cryptarithm catalog entry after "
                                  f"the {len(drill_rows())} cipher word lists (recall.coverage = "
                                  f"{self.recall.coverage}): raise it")
        if self.hardware.rollout_gpus and "grpo" not in self.stages:
            raise RecipeError("hardware.rollout_gpus serves DAPO rollouts, but the stages have no 'grpo'")
        n, g = self.hardware.train_processes, self.grpo  # the batches are global: each splits over the processes
        per_rank(self.sft.batch_size, self.sft.grad_accum, n)
        micro_batches(g.batch_prompts * g.group_size, g.micro_batch or g.group_size, n)


# ------------------------------------------------------------------------------------- reading a recipe


def _build(cls, table: dict, prefix: str = "", **fixed):
    """``cls`` from a TOML table (and the ``fixed`` fields no table sets): unknown keys refused here, types
    and values by the sections themselves."""
    names = {f.name for f in dataclasses.fields(cls)} - {"source"}
    kwargs = {}
    for name, value in table.items():
        if name not in names:
            where = f"{prefix[:-1]}: " if prefix else ""
            raise RecipeError(f"{where}unknown key {name!r}{did_you_mean(name, names)} (expected one of "
                              f"{sorted(names)})")
        hint = _hints(cls)[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise RecipeError(f"{prefix}{name}: expected a table, got {value!r}")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs, **fixed)


def did_you_mean(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_override_key(item: str, path: list[str]) -> None:
    """An override naming no recipe key is the command line's mistake, not the recipe file's: say so, with
    the closest key."""
    cls = Recipe
    for i, part in enumerate(path):
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        if part not in names:
            where = f"[{'.'.join(path[:i])}] has no key" if i else "no recipe key"
            raise RecipeError(f"override {item!r}: {where} {part!r}{did_you_mean(part, names)}; "
                              "`fastnemo recipe-keys` lists them all")
        hint = _hints(cls)[part]
        if not dataclasses.is_dataclass(hint):
            return
        cls = hint


def parse_override(item: str) -> tuple[list[str], object]:
    """``"sft.max_steps=3"`` -> (["sft", "max_steps"], 3). The value is read as a TOML value (``3``, ``2e-4``,
    ``true``, ``["q_proj"]``, ``"text"``); a bare word that is no TOML value is taken as a string."""
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or not name or any(not part for part in name.split(".")):
        raise RecipeError(f"override {item!r}: expected KEY=VALUE, e.g. sft.max_steps=3")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError; deep nesting, huge numbers
        value = text
    return name.split("."), value


def apply_overrides(table: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of the recipe ``table`` with ``key=value`` overrides set in it (checked when it is built)."""
    table = copy.deepcopy(table)
    for item in overrides:
        path, value = parse_override(item)
        check_override_key(item, path)
        node = table
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {'.'.join(path[: i + 1])} is a value, not a table")
            node = child
        node[path[-1]] = value
    return table


def build_recipe(table: dict, where: str = "recipe", source: str = "") -> Recipe:
    """A checked Recipe from a TOML-shaped table; errors are RecipeErrors that start with ``where``. Its
    relative paths resolve against the folder of ``source`` (the recipe file), else the working directory."""
    try:
        return _build(Recipe, table, source=source)
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, type-check and validate a recipe, with ``key=value`` ``overrides`` applied on top (checked exactly
    like keys in the file); relative paths inside it resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        table = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    except (RecursionError, ValueError) as e:  # arrays nested past the parser's depth, a 5,000-digit number
        raise RecipeError(f"{path}: not valid TOML ({type(e).__name__}: {str(e)[:120]})") from None
    recipe = build_recipe(apply_overrides(table, overrides), str(path), source=str(path.resolve()))
    recipe.overrides = tuple(overrides)
    return recipe


@dataclasses.dataclass(frozen=True)
class RecipePaths:
    """The recipe's path keys, each made absolute against the recipe file's folder (``resolve``) once, when
    the recipe is built (``Recipe.paths``); None where an optional one is "" (unset). The keys themselves keep
    what the user wrote: config.json and the provenance fingerprints record those."""

    run_dir: Path  # run_dir
    model: Path  # model.path
    start_from: Path | None  # start_from
    data: Path | None  # data.path
    like: Path | None  # data.like
    eval_data: Path | None  # eval.data
    trace_set: Path | None  # eval.trace_set
    distill_data: Path | None  # distill.data

    @classmethod
    def of(cls, recipe: Recipe) -> RecipePaths:
        def opt(value: str) -> Path | None:
            return resolve(recipe.source, value) if value else None

        return cls(run_dir=resolve(recipe.source, recipe.run_dir), model=resolve(recipe.source, recipe.model.path),
                   start_from=opt(recipe.start_from), data=opt(recipe.data.path), like=opt(recipe.data.like),
                   eval_data=opt(recipe.eval.data), trace_set=opt(recipe.eval.trace_set),
                   distill_data=opt(recipe.distill.data))


def resolve(source: str, value: str) -> Path:
    """A path of the recipe read from the file ``source``, made absolute against that file's folder (kept
    relative to the working directory when there is no file)."""
    p = Path(value).expanduser()
    if p.is_absolute() or not source:
        return p
    return (Path(source).parent / p).resolve()


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


# ------------------------------------------------------------------------------------------- the docs


def iter_keys(cls=Recipe, prefix: str = ""):
    """(dotted key, field, type hint) of every recipe key, sections depth first, in declaration order."""
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if f.name == "source":
            continue
        if dataclasses.is_dataclass(hint):
            yield from iter_keys(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hint


def type_text(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return " \\| ".join(f'"{a}"' for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list of {type_text(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is dict:
        return f"table of {type_text(typing.get_args(hint)[1])}"
    return hint.__name__


def default_of(f) -> object:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def bounds_text(meta) -> str:
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    parts = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
             f"<= {le}" if le is not None else ""]
    return ", ".join(p for p in parts if p)


def recipe_table() -> str:
    """The README's table of every recipe key, generated from the dataclasses above."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f, hint in iter_keys():
        kind = type_text(hint) + (f" ({bounds_text(f.metadata)})" if bounds_text(f.metadata) else "")
        text = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | `{json.dumps(default_of(f))}` | {text} |")
    return "\n".join(lines) + "\n"
