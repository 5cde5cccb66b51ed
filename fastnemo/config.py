"""The recipe: one TOML file, typed by the dataclasses below. Every field's default and meaning is documented
here, where it is defined. Unknown keys and wrong types are errors that name the file and the key.

A recipe reads top to bottom: what model, which LoRA, what data, then one section per stage, and
``stages`` says which run, in order. ``rounds`` repeats the round stages (see ``fastnemo.recipe``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

MAX_LORA_RANK = 32  # the competition loads adapters with max_lora_rank 32

# The widest target set that trains correctly on nemotron_h with PEFT + TRL (tests/fastnemo/test_session.py
# checks that every targeted LoRA weight receives a gradient). Left out on purpose:
# - the Mamba out_proj and conv1d: PEFT refuses them (transformers' fused Mamba kernel bypasses the LoRA);
# - lm_head: TRL 1.15's trainers compute log-probs from lm_head.weight directly (fused LM head), so a LoRA
#   there would never train, and they refuse it;
# - the fused MoE experts (3-D parameters, not nn.Linear): reachable only through PEFT's target_parameters.
# The shared experts' up_proj/down_proj are nn.Linear and are adapted.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj")

STAGES = ("data", "sft", "eval", "distill", "grpo", "pack")


class RecipeError(ValueError):
    """A recipe that cannot be run: names the file and the key."""


@dataclasses.dataclass
class ModelConfig:
    path: str = "models/tiny-nemotron"
    """Local directory with config.json, weights and tokenizer. Relative paths resolve against the recipe."""
    base_model_name: str = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
    """Written as base_model_name_or_path in adapter_config.json: the model the adapter is scored on."""
    tiny: bool = False
    """Build a tiny random nemotron_h model at `path` when it is absent (CPU smoke runs and tests)."""
    backend: str = "hf"
    """"hf" (transformers + PEFT) or "unsloth" (Unsloth's LoRA kernels; GPU only)."""
    dtype: str = "auto"
    """"auto" (bfloat16 on GPU, float32 on CPU), "bfloat16", "float16" or "float32"."""
    load_in_4bit: bool = False
    """Quantize the base weights with bitsandbytes (GPU only)."""
    experts_implementation: str = "auto"
    """MoE experts kernel: "auto" (transformers' choice: grouped_mm where it can dispatch, else eager),
    "grouped_mm" (4x eager on the H100, measured) or "eager"; "batched_mm" ran out of memory there."""
    max_seq_length: int = 8192
    """Longest prompt + completion, in tokens (the competition's max_model_len is 8192)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward: the memory that makes 8k-token SFT fit on one H100."""


@dataclasses.dataclass
class LoraConfig:
    rank: int = 32
    """LoRA rank r; the competition accepts at most 32."""
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Module names to adapt; must exist in the model (checked at load)."""
    train_experts: bool = False
    """Also put LoRA on the fused MoE experts (PEFT target_parameters). Off by default: at rank 32 it adds
    ~13 GiB of fp32 LoRA + Adam state on the full model, and the competition's vLLM serves expert LoRA only
    as per-expert 2-D weights, so a stacked expert adapter would need converting before submission."""


@dataclasses.dataclass
class SamplingConfig:
    """Generation settings. The defaults are the competition's scoring settings (greedy, 7,680 tokens)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 7680
    seed: int = 0


@dataclasses.dataclass
class GenerationConfig:
    engine: str = "hf"
    """"hf" (transformers generate on the training model) or "vllm" (in-process, colocated)."""
    batch_size: int = 64
    """Prompts per generate call (the competition runs max_num_seqs 64)."""
    gpu_memory_utilization: float = 0.35
    """vLLM's share of GPU memory when colocated with training."""
    max_model_len: int = 8192


@dataclasses.dataclass
class DataConfig:
    n: int = 2000
    """Puzzles to generate for SFT (solver traces)."""
    like: str = ""
    """Reference CSV whose category shares and difficulty the mix matches ("" = uniform)."""
    floor: int = 0
    """Minimum rows per category."""
    keep_guessed: list[str] = dataclasses.field(default_factory=lambda: ["unit_conversion", "gravity"])
    """Categories whose guessed solver rows are kept when exactly the generator's answer: their rounded
    examples leave only the last digit open; dropping them would skew the mix toward small answers."""
    workers: int = 2
    """Processes for the mix build."""
    path: str = ""
    """Use this existing SFT JSONL instead of generating ("" = generate)."""
    shares: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per-category share overrides, e.g. {equations = 0.25}: renormalised with the categories left out,
    which keep the `like` file's real shares (the default: {} keeps them all)."""
    drill_share: float = 0.0
    """Fraction of the `n` rows that are cryptarithm catalog recall drills (signature -> candidates,
    ``puzzles.cryptarithm``): the memory the symbolic-equation traces recall from."""


@dataclasses.dataclass
class SFTConfig:
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = run the epochs)."""
    batch_size: int = 1
    grad_accum: int = 8
    max_length: int = 8192
    warmup: float = 0.03
    """Warm-up: a fraction of the steps when < 1, else a number of steps."""
    save_steps: int = 200
    """Trainer checkpoint every N steps: an interrupted SFT resumes from the last one."""
    logging_steps: int = 10


@dataclasses.dataclass
class EvalConfig:
    data: str = ""
    """Validation CSV (id,prompt,answer): the user's train.csv. "" = a held-out generated set."""
    limit: int = 0
    """Evaluate at most this many rows, stratified by category (0 = all)."""
    n_generated: int = 120
    """Size of the held-out generated set when `data` is empty."""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)


@dataclasses.dataclass
class DistillConfig:
    prompts: int = 2000
    """Prompts to sample (new generated puzzles unless `data` is set)."""
    data: str = ""
    k: int = 8
    """Candidates per prompt."""
    keep: int = 1
    """Verified traces kept per prompt (shortest first)."""
    temperature: float = 0.7
    max_tokens: int = 7680
    goldilocks_low: float = 0.2
    goldilocks_high: float = 0.8
    """Prompts solved within [low, high] of the time go to the next RL stage."""
    carry_share: float = 0.3
    """Share of the previous SFT data mixed into the next SFT set."""


@dataclasses.dataclass
class GRPOConfig:
    prompts: int = 2000
    max_steps: int = 100
    learning_rate: float = 1e-6
    group_size: int = 8
    """Completions per prompt (2-16)."""
    batch_prompts: int = 4
    """Prompts per optimizer step (after dynamic sampling refills the batch)."""
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.0
    loss_type: str = "dapo"
    """Token-level loss normalisation (TRL loss_type)."""
    max_tokens: int = 7680
    temperature: float = 1.0
    overlong: str = "mask"
    """"mask" truncated completions out of the loss, or "penalty" (soft length penalty)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal, refill until the batch is full."""
    updates_per_generation: int = 1
    """Optimizer steps per rollout batch. At 1 every step is on-policy and the clip range never binds;
    at 2+ the later steps are off-policy and DAPO's clip-higher takes effect."""
    micro_batch: int = 0
    """Completions per forward/backward (0 = one group). Lower it when a group of long completions OOMs."""
    format_reward: float = 0.0
    """Weight of the format reward (exactly one final box after the reasoning); 0 = off."""
    length_reward: str = "none"
    """"none", "cosine" (cosine-scaled correctness) or "penalty" (length penalty)."""
    save_steps: int = 25


@dataclasses.dataclass
class Recipe:
    name: str = "run"
    run_dir: str = "runs/run"
    """Run directory (relative to the recipe file). Re-running the recipe resumes it."""
    seed: int = 0
    stages: list[str] = dataclasses.field(default_factory=lambda: ["data", "sft", "eval", "pack"])
    rounds: int = 1
    """Repeat the stages (all but pack) this many times; pack runs once, after the last round."""
    until_plateau: int = 0
    """Stop before `rounds` when the best validation score has not improved for this many rounds (0 = off)."""
    start_from: str = ""
    """A previous run directory (its best checkpoint and its SFT data) or an adapter folder to start from."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    source: str = ""
    """The recipe file this was read from (set by load_recipe)."""


def _check_type(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(hint)
        return {k: _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise RecipeError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, table: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields or key == "source":
            raise RecipeError(f"{where}: unknown key {key!r} (expected one of {sorted(fields - {'source'})})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}.{key}: expected a table, got {value!r}")
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def validate(recipe: Recipe, where: str) -> None:
    """Cross-field checks that types alone cannot express."""
    if not 1 <= recipe.lora.rank <= MAX_LORA_RANK:
        raise RecipeError(f"{where}: lora.rank must be in 1..{MAX_LORA_RANK}, got {recipe.lora.rank}")
    for stage in recipe.stages:
        if stage not in STAGES:
            raise RecipeError(f"{where}: stages: unknown stage {stage!r} (expected some of {STAGES})")
    choices = {
        "model.backend": (recipe.model.backend, ("hf", "unsloth")),
        "generation.engine": (recipe.generation.engine, ("hf", "vllm")),
        "grpo.overlong": (recipe.grpo.overlong, ("mask", "penalty")),
        "grpo.length_reward": (recipe.grpo.length_reward, ("none", "cosine", "penalty")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise RecipeError(f"{where}: {key} must be one of {allowed}, got {value!r}")
    more = {
        "model.dtype": (recipe.model.dtype, ("auto", "bfloat16", "float16", "float32")),
        "model.experts_implementation": (recipe.model.experts_implementation, ("auto", "grouped_mm", "eager")),
    }
    for key, (value, allowed) in more.items():
        if value not in allowed:
            raise RecipeError(f"{where}: {key} must be one of {allowed}, got {value!r}")
    if "lm_head" in recipe.lora.target_modules:
        raise RecipeError(f"{where}: lora.target_modules: 'lm_head' cannot be trained (TRL's trainers compute "
                          "log-probs from lm_head.weight directly; its LoRA would never get a gradient)")
    from puzzles.base import CATEGORIES

    bad = sorted(set(recipe.data.shares) - set(CATEGORIES))
    if bad or any(v < 0 for v in recipe.data.shares.values()):
        raise RecipeError(f"{where}: data.shares: keys must be categories {CATEGORIES} with shares >= 0, "
                          f"got {recipe.data.shares}")
    if not 0 <= recipe.data.drill_share < 1:
        raise RecipeError(f"{where}: data.drill_share must be in [0, 1), got {recipe.data.drill_share}")
    d = recipe.distill
    if not 0 <= d.goldilocks_low <= d.goldilocks_high <= 1:
        raise RecipeError(f"{where}: distill.goldilocks_low/high must satisfy 0 <= low <= high <= 1, "
                          f"got {d.goldilocks_low}, {d.goldilocks_high}")
    g = recipe.grpo
    if g.micro_batch and (g.batch_prompts * g.group_size) % g.micro_batch:
        raise RecipeError(f"{where}: grpo.micro_batch {g.micro_batch} must divide batch_prompts x group_size "
                          f"= {g.batch_prompts * g.group_size}")
    trained = "base"
    seen = set()
    for stage in recipe.stages:  # an evaluation needs something new to score
        if stage == "eval":
            if trained in seen:
                raise RecipeError(f"{where}: stages: two 'eval' after the same training stage ({trained!r})")
            seen.add(trained)
        elif stage in ("sft", "grpo"):
            trained = stage
    if len([s for s in recipe.stages if s in ("sft", "grpo", "data", "distill")]) != len(
        {s for s in recipe.stages if s in ("sft", "grpo", "data", "distill")}
    ):
        raise RecipeError(f"{where}: stages: data, sft, distill and grpo may each appear once per round")
    if not 2 <= recipe.grpo.group_size <= 16:
        raise RecipeError(f"{where}: grpo.group_size must be in 2..16, got {recipe.grpo.group_size}")
    if recipe.rounds < 1:
        raise RecipeError(f"{where}: rounds must be >= 1, got {recipe.rounds}")


def load_recipe(path: str | Path) -> Recipe:
    """Read, type-check and validate a recipe; relative paths inside it resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from e
    recipe = _build(Recipe, table, str(path))
    validate(recipe, str(path))
    recipe.source = str(path.resolve())
    return recipe


def resolve(recipe: Recipe, value: str) -> Path:
    """A path from the recipe, made absolute against the recipe file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or not recipe.source:
        return p
    return (Path(recipe.source).parent / p).resolve()


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)

