"""Memory plan: will this recipe's model, LoRA, batch and generation settings fit one 80 GB card?

An estimate from the model's config (parameter counts per layer kind), not a measurement. Terms:
- weights: every parameter at its storage width. bitsandbytes 4-bit packs only 2-D ``nn.Linear`` weights
  (attention, Mamba in_proj, shared experts) at ~0.56 bytes/param; the fused 3-D MoE experts (~93% of
  Nemotron-3-Nano), embeddings, lm_head and the Mamba out_proj stay bf16 (see fastnemo.unsloth_backend).
- LoRA + optimizer: adapter params in fp32 (PEFT upcasts them) with fp32 grad and AdamW's two moments.
- activations (training): with gradient checkpointing, one bf16 hidden state per layer per token plus one
  layer's recomputed working set (the MoE layer's routed copies and their gradients); the loss head computes
  log-probs in chunks (TRL's fused LM head).
- generation: the KV cache of the attention layers and the Mamba conv + SSM state per sequence, plus, for
  the hf engine, the prefill of a whole batch of prompts at once (vLLM prefills in bounded chunks).
- headroom: CUDA context, allocator fragmentation and kernels' workspaces.
Checked against torch.cuda.max_memory_allocated on real-width slices (bench/README.md, "GPU results"):
training within 10 % of the measured peak at 2k-8k tokens, hf-engine generation calibrated on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

GIB = 2**30
CARD_GIB = 79.2  # what torch reports for an H100 80GB HBM3
HEADROOM_GIB = 3.0
# the released Nemotron-3-Nano-30B-A3B layout (hybrid_override_pattern): 23 Mamba, 23 MoE, 6 attention
NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
NANO_LAYERS = [{"M": "linear_attention", "E": "moe", "*": "full_attention"}[c] for c in NANO_PATTERN]
# Its sizes, for planning before the model is downloaded (the plan reads config.json when it is there).
NANO_CONFIG = {
    "hidden_size": 2688, "vocab_size": 131072, "layers_block_type": NANO_LAYERS,
    "n_routed_experts": 128, "num_experts_per_tok": 6, "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712, "mamba_num_heads": 64, "mamba_head_dim": 64,
    "ssm_state_size": 128, "n_groups": 8, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
}


@dataclasses.dataclass
class MemoryPlan:
    weights_gib: float
    lora_optimizer_gib: float
    activations_gib: float
    generation_gib: float
    headroom_gib: float
    card_gib: float = CARD_GIB
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return (
            self.weights_gib
            + self.lora_optimizer_gib
            + max(self.activations_gib, self.generation_gib)
            + self.headroom_gib
        )

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.card_gib


def _get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def layer_params(cfg) -> dict[str, dict[str, int]]:
    """Parameters per layer kind, split into 'linear2d' (4-bit-able), 'experts3d' and 'other' (bf16 always)."""
    h = _get(cfg, "hidden_size")
    mh, md, ng, ns = (
        _get(cfg, k) for k in ("mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size")
    )
    inner = mh * md
    conv_dim = inner + 2 * ng * ns
    qh, kvh, hd = (_get(cfg, k) for k in ("num_attention_heads", "num_key_value_heads", "head_dim"))
    e, mi, si = (
        _get(cfg, k)
        for k in ("n_routed_experts", "moe_intermediate_size", "moe_shared_expert_intermediate_size")
    )
    return {
        "linear_attention": {
            "linear2d": h * (inner + conv_dim + mh),
            "other": inner * h + conv_dim * 4 + 3 * mh + inner + h,
        },
        "full_attention": {"linear2d": h * (qh * hd + 2 * kvh * hd) + qh * hd * h, "other": h},
        "moe": {"experts3d": 2 * e * mi * h, "linear2d": 2 * si * h, "other": e * h + e + h},
        "mlp": {"linear2d": 2 * (_get(cfg, "intermediate_size") or 0) * h, "other": h},
    }


def moe_token_bytes(cfg) -> int:
    """bf16 bytes of one token's routed copies in an MoE layer: its input, expert up-projection, activation
    and down-projection outputs, once per chosen expert."""
    return _get(cfg, "num_experts_per_tok") * 2 * (_get(cfg, "hidden_size") + _get(cfg, "moe_intermediate_size")) * 2


# transformers' generate prefills every prompt of a batch at once: measured 472 KB per prompt token on the
# real widths (64 prompts, H200, bench/rollout_throughput.py), 4.3x one MoE layer's routed copies.
HF_PREFILL_COPIES = 4.3


def lora_params(cfg, layers: list[str], rank: int, targets: list[str], experts: bool) -> int:
    """LoRA A+B parameters for the targeted nn.Linear leaves (and the stacked expert LoRA if ``experts``)."""
    h = _get(cfg, "hidden_size")
    inner = _get(cfg, "mamba_num_heads") * _get(cfg, "mamba_head_dim")
    conv_dim = inner + 2 * _get(cfg, "n_groups") * _get(cfg, "ssm_state_size")
    qd, kvd = (
        _get(cfg, "num_attention_heads") * _get(cfg, "head_dim"),
        _get(cfg, "num_key_value_heads") * _get(cfg, "head_dim"),
    )
    si, e, mi = (
        _get(cfg, "moe_shared_expert_intermediate_size"),
        _get(cfg, "n_routed_experts"),
        _get(cfg, "moe_intermediate_size"),
    )
    shapes = {  # leaf -> (in, out) per layer kind
        "linear_attention": {
            "in_proj": (h, inner + conv_dim + _get(cfg, "mamba_num_heads")),
            "out_proj": (inner, h),
        },
        "full_attention": {"q_proj": (h, qd), "k_proj": (h, kvd), "v_proj": (h, kvd), "o_proj": (qd, h)},
        "moe": {"up_proj": (h, si), "down_proj": (si, h)},
    }
    n = 0
    for kind in layers:
        for leaf, (i, o) in shapes.get(kind, {}).items():
            if leaf in targets:
                n += rank * (i + o)
        if kind == "moe" and experts:
            n += sum(e * rank * (h + mi) for leaf in ("up_proj", "down_proj") if leaf in targets)
    if "lm_head" in targets:
        n += rank * (h + _get(cfg, "vocab_size"))
    return n


def plan(
    model_cfg_json: dict,
    *,
    backend: str = "hf",
    load_in_4bit: bool = False,
    rank: int = 32,
    targets: list[str] | None = None,
    batch: int = 1,
    seq_len: int = 8192,
    gradient_checkpointing: bool = True,
    gen_seqs: int = 64,
    gen_len: int = 8192,
    card_gib: float = CARD_GIB,
    train_experts: bool = False,
    engine: str = "hf",
    prompt_tokens: int = 512,
    optimizer_8bit: bool = False,
    lora_bf16: bool = False,
    experts_4bit: bool = False,
) -> MemoryPlan:
    """Estimate the peak memory of LoRA SFT / generation for the model described by ``model_cfg_json``.

    The levers: ``optimizer_8bit`` (bitsandbytes 8-bit AdamW: 2 bytes of moments per LoRA parameter instead
    of 8), ``lora_bf16`` (LoRA weights and grads in bf16: 4 bytes instead of 8), ``experts_4bit`` (the FROZEN
    3-D experts stored in bnb 4-bit, dequantized per layer; vLLM then cannot share them and holds its own bf16
    copy, which it drops while training: sleep level 2, so generation needs both copies)."""
    from fastnemo.targets import DEFAULT_TARGETS

    cfg = model_cfg_json
    targets = list(targets or DEFAULT_TARGETS)
    layers = list(_get(cfg, "layers_block_type") or _get(cfg, "layer_types"))
    per = layer_params(cfg)
    h, v = _get(cfg, "hidden_size"), _get(cfg, "vocab_size")
    lin = sum(per[k].get("linear2d", 0) for k in layers)
    exp = sum(per[k].get("experts3d", 0) for k in layers)
    other = sum(per[k].get("other", 0) for k in layers) + 2 * v * h  # + embeddings and lm_head
    weights = (lin * (0.5625 if load_in_4bit else 2) + exp * (0.5625 if experts_4bit else 2) + other * 2) / GIB
    notes = []
    if load_in_4bit:
        notes.append(
            f"4-bit packs only {lin / (lin + exp + other):.0%} of the weights; the 3-D experts stay bf16"
        )
    n_lora = lora_params(cfg, layers, rank, targets, train_experts)
    # param + grad (fp32 as PEFT upcasts, or bf16) + two AdamW moments (fp32, or 8-bit)
    lora = n_lora * ((4 if lora_bf16 else 8) + (2 if optimizer_8bit else 8)) / GIB
    tokens = batch * seq_len
    if gradient_checkpointing:
        # saved layer inputs + one layer's recompute (the MoE layer: routed copies and their gradients)
        work = max(
            tokens * moe_token_bytes(cfg) * 2,
            tokens * (2 * _get(cfg, "mamba_num_heads") * _get(cfg, "mamba_head_dim") * 2) * 3,
        )
        act = (len(layers) * tokens * h * 2 + work) / GIB
    else:
        act = len(layers) * tokens * h * 2 * 12 / GIB
        notes.append("no gradient checkpointing: ~12 hidden-size tensors kept per layer per token")
    act += tokens * h * 4 * 2 / GIB  # fused LM head: fp32 hidden states and their grad
    if "lm_head" in targets:  # fastnemo.lora hands the fused head [W, B] (a bf16 copy) and gets its grad back
        act += 2 * v * (h + rank) * 2 / GIB
    n_attn = layers.count("full_attention")
    n_mamba = layers.count("linear_attention")
    kv = n_attn * 2 * _get(cfg, "num_key_value_heads") * _get(cfg, "head_dim") * 2 * gen_len * gen_seqs
    inner = _get(cfg, "mamba_num_heads") * _get(cfg, "mamba_head_dim")
    ssm = (
        n_mamba
        * gen_seqs
        * (
            inner * _get(cfg, "ssm_state_size") * 2
            + (inner + 2 * _get(cfg, "n_groups") * _get(cfg, "ssm_state_size")) * 4 * 2
        )
    )
    logits = gen_seqs * v * 4 * 2  # one step's fp32 logits + sampling copy
    prefill = gen_seqs * prompt_tokens * HF_PREFILL_COPIES * moe_token_bytes(cfg) if engine == "hf" else 0
    gen = (kv + ssm + logits + prefill) / GIB
    if experts_4bit:  # vLLM's own bf16 weights, back from sleep level 2 for each generation phase
        gen += (lin + exp + other) * 2 / GIB
        notes.append("4-bit experts: vLLM keeps its own bf16 weights and sleeps at level 2 while training "
                     "(weights dropped, reloaded for each generation phase)")
    p = MemoryPlan(weights, lora, act, gen, HEADROOM_GIB, card_gib, notes)
    if not p.fits:
        p.notes.append(suggest(p, batch, seq_len, gen_seqs))
    return p


# Target sets, widest first: what won (field notes), then what is dropped to fit, and why.
TARGET_SETS = (
    ("winners (all + routed experts)", True, ()),
    ("routed experts frozen", False, ()),
    ("no lm_head, out_proj", False, ("lm_head", "out_proj")),
)
LEVERS = (
    ("none", {}),
    ("8-bit AdamW", {"optimizer_8bit": True}),
    ("8-bit AdamW + bf16 LoRA", {"optimizer_8bit": True, "lora_bf16": True}),
    ("8-bit AdamW + bf16 LoRA + 4-bit experts (vLLM sleep 2)",
     {"optimizer_8bit": True, "lora_bf16": True, "experts_4bit": True}),
)
# which levers fastnemo's training implements today (the others are planned only)
IMPLEMENTED = {"optimizer_8bit": True, "lora_bf16": True, "experts_4bit": False}


# The full 52-layer model, the default 9-module set (32.0 M), token budget 8,192, hf backend, H200 under a 79.2
# GiB cap: 64.6 GiB measured training peak (record full-sft-default9-budget8192, 2026-12-02). The target-set
# table adds the plan's gap to it, and shows what was measured beside what was planned.
MEASURED_TRAIN_GIB = 64.58
MEASURED_SFT_GIB = {  # (target set, levers) -> (peak GiB at 8,192 tokens a step, record id)
    ("routed experts frozen", "none"): (64.58, "full-sft-default9-budget8192"),
    ("winners (all + routed experts)", "8-bit AdamW + bf16 LoRA"): (67.61, "full-sft-full-levers-budget8192"),
}


def _train_gib(p: MemoryPlan) -> float:
    return p.weights_gib + p.lora_optimizer_gib + p.activations_gib + p.headroom_gib


def target_sets(cfg, *, rank: int = 32, batch: int = 1, seq_len: int = 8192, card_gib: float = CARD_GIB,
                generation: bool = True, **kw) -> list[dict]:
    """Every target set x lever: LoRA parameters, the SFT peak (the plan plus its measured gap on the full
    model), the colocated-generation peak, and whether it fits ``card_gib``."""
    from fastnemo.targets import DEFAULT_TARGETS, FULL_TARGETS

    anchor = _train_gib(plan(NANO_CONFIG, rank=32, targets=list(DEFAULT_TARGETS)))
    # the plan's error on the measured set, either way (it overestimated by 3.0 GiB on 2026-12-02's record)
    full = _get(cfg, "hidden_size") == NANO_CONFIG["hidden_size"]
    gap = MEASURED_TRAIN_GIB - anchor if full else 0.0
    layers = list(_get(cfg, "layers_block_type") or _get(cfg, "layer_types"))
    rows = []
    for name, experts, dropped in TARGET_SETS:
        targets = [t for t in FULL_TARGETS if t not in dropped]
        n = lora_params(cfg, layers, rank, targets, experts)
        for lever, flags in LEVERS:
            p = plan(cfg, rank=rank, targets=targets, batch=batch, seq_len=seq_len, card_gib=card_gib,
                     train_experts=experts, **flags, **kw)
            train = _train_gib(p) + gap
            gen = p.weights_gib + p.lora_optimizer_gib + p.generation_gib + p.headroom_gib
            fits = train <= card_gib and (not generation or gen <= card_gib)
            rows.append({"set": name, "targets": targets, "train_experts": experts, "levers": lever, "flags": flags,
                         "lora_params": n, "train_gib": train, "generation_gib": gen if generation else None,
                         "fits": fits, "over_gib": max(train, gen if generation else 0) - card_gib,
                         "measured_gib": MEASURED_SFT_GIB.get((name, lever), (None,))[0] if full and seq_len == 8192 else None,
                         "implemented": all(IMPLEMENTED[f] for f in flags)})
    return rows


def widest_fit(rows: list[dict], implemented_only: bool = True) -> dict | None:
    """The widest target set that fits, with the fewest levers (rows come widest set, fewest levers first)."""
    return next((r for r in rows if r["fits"] and (r["implemented"] or not implemented_only)), None)


def target_sets_table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("target set", "levers", "LoRA params", "SFT GiB", "measured", "gen GiB", "fits"):
        t.add_column(col, justify="left" if col in ("target set", "levers") else "right")
    for r in rows:
        fits = "[green]yes[/green]" if r["fits"] else f"[red]no[/red] (+{r['over_gib']:.1f})"
        gen = "-" if r["generation_gib"] is None else f"{r['generation_gib']:.1f}"
        measured = "-" if r.get("measured_gib") is None else f"{r['measured_gib']:.1f}"
        t.add_row(r["set"], r["levers"] + ("" if r["implemented"] else " (planned only)"),
                  f"{r['lora_params'] / 1e6:,.1f} M", f"{r['train_gib']:.1f}", measured, gen, fits)
    return t


def suggest(p: MemoryPlan, batch: int, seq_len: int, gen_seqs: int) -> str:
    over = p.total_gib - p.card_gib
    if p.weights_gib + p.lora_optimizer_gib + p.headroom_gib > p.card_gib:
        return f"over by {over:.1f} GiB: the weights alone do not fit this card; 4-bit barely helps (experts stay bf16)"
    if p.generation_gib > p.activations_gib:
        fits = int(gen_seqs * (p.generation_gib - over) / p.generation_gib)
        return f"over by {over:.1f} GiB in generation: lower generation.batch_size from {gen_seqs} to {max(fits, 1)}"
    if batch > 1:
        return f"over by {over:.1f} GiB: lower sft.batch_size to 1 and raise sft.grad_accum by {batch}x"
    return f"over by {over:.1f} GiB: lower max_length below {seq_len} or enable gradient_checkpointing"


def plan_table(p: MemoryPlan, title: str = "memory plan (estimate)"):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("term")
    t.add_column("GiB", justify="right")
    for name, val in [
        ("weights", p.weights_gib),
        ("LoRA + optimizer", p.lora_optimizer_gib),
        ("activations (training)", p.activations_gib),
        ("generation (KV, Mamba state, hf prefill)", p.generation_gib),
        ("headroom", p.headroom_gib),
        ("peak (training or generation)", p.total_gib),
        ("card", p.card_gib),
    ]:
        t.add_row(name, f"{val:.1f}")
    t.add_row("fits", "[green]yes[/green]" if p.fits else "[red]no[/red]")
    return t


def plan_recipe(recipe) -> MemoryPlan:
    """The plan for a loaded ``Recipe`` (model config.json read from model.path)."""
    path = recipe.paths.model / "config.json"
    cfg = json.loads(path.read_text()) if path.exists() else NANO_CONFIG
    p = plan(
        cfg,
        backend=recipe.model.backend,
        load_in_4bit=recipe.model.load_in_4bit,
        rank=recipe.lora.rank,
        targets=list(recipe.lora.target_modules),
        batch=recipe.sft.batch_size,
        seq_len=recipe.sft.max_length,
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        gen_seqs=recipe.generation.batch_size,
        gen_len=recipe.generation.max_model_len,
        train_experts=recipe.lora.train_experts,
        engine=recipe.generation.engine,
        optimizer_8bit=recipe.lora.optimizer_8bit,
        lora_bf16=recipe.lora.bf16_weights,
    )
    if not path.exists():
        p.notes.insert(0, f"{path} not found: planned for the released Nemotron-3-Nano-30B-A3B sizes")
    return p


def plan_command_main(recipe_path: str) -> int:
    """Body of ``fastnemo plan RECIPE``: print the table; exit code 1 when it does not fit."""
    from rich.console import Console

    from fastnemo.config import RecipeError, load_recipe
    from fastnemo.progress import wide

    try:
        recipe = load_recipe(Path(recipe_path))
    except RecipeError as e:
        Console(stderr=True).print(f"[red]{e}")
        return 2
    p = plan_recipe(recipe)
    console = wide(Console())  # `fastnemo plan > plan.txt`: lines and tables whole, not wrapped at 80
    console.print(plan_table(p))
    console.print(time_table(recipe))
    console.print(f"- {rates_line()}", soft_wrap=True)  # one line in a file; a terminal wraps it itself
    for line in validation_lines(recipe) + backend_lines(recipe):
        console.print(f"- {line}")
    for n in p.notes:
        console.print(f"- {n}")
    if "recall" in recipe.stages:
        rp = recall_plan(recipe)
        console.print(f"- recall: {rp['entries']:,} entries, {rp['exposures']} exposures per entry, "
                      f"{rp['tokens_per_pass'] / 1e6:.2f}M tokens a pass, {rp['tokens'] / 1e6:.1f}M in all, "
                      f"{rp['hours']:.2f} h; recall.coverage = {recipe.recall.coverage} leaves out "
                      f"{rp['signatures_left_out']:,} signatures ({rp['candidates_left_out']:,} candidates, "
                      f"{rp['prior_mass_left_out']:.1%} of the prior mass)"
                      + (f": {rp['real_given_up']}" if rp["real_given_up"] else ""))
    config = recipe.paths.model / "config.json"
    rows = target_sets(json.loads(config.read_text()) if config.exists() else NANO_CONFIG,
                       rank=recipe.lora.rank, batch=recipe.sft.batch_size, seq_len=recipe.sft.max_length,
                       generation=any(st in recipe.stages for st in ("eval", "distill", "grpo")),
                       engine=recipe.generation.engine, gen_seqs=recipe.generation.batch_size)
    console.print(target_sets_table(rows, f"target sets at {recipe.sft.batch_size} x {recipe.sft.max_length} "
                                          "tokens (SFT peak calibrated on a measured record of the full model)"))
    best = widest_fit(rows)
    if best is None:
        console.print("- no target set fits with the implemented levers")
    else:
        console.print(f"- widest set that fits: {best['set']} with {best['levers']}"
                      + ("" if best["set"] == rows[0]["set"] else f"; dropped from the winners' set: over by "
                         f"{min(r['over_gib'] for r in rows[:len(LEVERS)] if r['implemented']):.1f} GiB with "
                         "every implemented lever"))
    return 0 if p.fits else 1


def _plan_click():
    import click

    @click.command("plan")
    @click.argument("recipe_file", type=click.Path(exists=True, dir_okay=False))
    def plan_command(recipe_file):
        """Estimate a recipe's peak GPU memory (weights, LoRA + optimizer, activations, generation) on an
        80 GB card; exit 1 when it does not fit, with a suggested change."""
        raise SystemExit(plan_command_main(recipe_file))

    return plan_command


plan_command = _plan_click()


# ------------------------------------------------------------------------------------------ wall-clock
# Rates behind the time plan, each with where it comes from. Replace them with bench/ numbers from your card.
# "Measured" = on the H200 test machine (bench/README.md, GPU results) on a real-width 4-layer slice (M E A E),
# scaled to the 52 layers by 4/52; an H100 has the same compute and ~70 % of the H200's memory bandwidth.
# Measured rates: each names its record in bench/results/*.jsonl (id, date); tests/bench/test_results.py
# checks every value against its record. H200 under a 79.2 GiB cap: decode-bound figures are ~1.4x an H100's.
RATES = {
    "train_tok_s_hf": (998, ("SFT tokens/s, full model, hf backend, batch 1 at 880-token rows: record "
                            "full-sft-fastnemo-batch1, 2026-12-01")),
    "train_tok_s_hf_budget": (9_358, ("the same with sft.token_budget = 16384 (length-grouped batches): record "
                                     "full-sft-budget16384, 2026-12-01")),
    "train_tok_s_hf_budget_experts": (8_443, ("the winners' full set (routed experts, 888 M) with 8-bit AdamW + "
                                             "bf16 LoRA, sft.token_budget = 16384 (peak 71.2 GiB): record "
                                             "full-sft-full-levers-budget16384, 2026-12-02")),
    "train_tok_s_recall_packed": (3_560, ("the recall stage's packed drill rows (<= 16 requests, <= 8,192 tokens), "
                                         "the full set, token budget 16,384, in the winners' recipe at full size: "
                                         "record h200-sft-recall-packed, 2026-12-06")),
    "train_tok_s_unsloth": (998, ("no batch-1 record for the unsloth backend: the hf batch-1 record "
                                 "full-sft-fastnemo-batch1, 2026-12-01")),
    "train_tok_s_unsloth_budget": (5_395, ("unsloth backend, sft.token_budget = 8192, default targets (lm_head "
                                          "left out), beside its sleeping vLLM: record "
                                          "full-sft-unsloth-shared-budget8192, 2026-12-02")),
    "vllm_tok_s": (9_042, ("vLLM 0.26 tokens/s, LoRA r32, 32 prompts x 8 samples, T 0.7, 1,024 new tokens: record "
                          "full-vllm-distill, 2026-12-01")),
    "vllm_tok_s_unsloth": (4_158, ("Unsloth fast_inference (shared weights, 0.85 of the card, max_num_seqs 64), "
                                  "the same shape: record full-unsloth-vllm-distill-seqs64, 2026-12-02")),
    "hf_tok_s": (496, ("transformers generate through the hf engine, 64 sequences, greedy: record full-hf-engine, "
                      "2026-12-01")),
    "build_rows_s": (250, "data build rows/s on 2 CPU cores (bench: puzzles/mix.py)"),
    # The harness (fastnemo.harness: the scorer's vLLM in a child process), H100 80GB HBM3, full 52 layers,
    # the winners' full LoRA, completion lengths of a built mix (mean ~950), 600 puzzles. At 64 the lane's own
    # run (2026-12-07: engine start 129 s, dummy weights; KV pool 268,288 tokens at 0.92); at 256 the issue's
    # H100 probe (the lane's 256 run had device time for 180 puzzles only, where the tail with fewer than
    # max_num_seqs running weighs ~3x more: 2,491 tok/s there, a lower bound).
    "harness_tok_s": (2_936, ("harness tokens/s at max_num_seqs 64, gpu_memory_utilization 0.92, 600 puzzles: "
                             "record h100-validation-harness-seqs64, 2026-12-07")),
    "harness_tok_s_seqs256": (4_697, ("the same at max_num_seqs 256: record seed-h100-harness-seqs256, "
                                     "2026-12-06")),
    "harness_start_s": (230, ("the harness's engine start in the winners' recipe at full size on an H100 (59 GiB "
                             "read from a RAM disk, torch.compile, CUDA graphs, the full set's LoRA slots; 129-150 "
                             "s with dummy weights): record h100-recipe-fullsize-r1-eval-sft, 2026-12-07")),
    "harness_overhead_s": (47, ("the rest of a harness stage beside the engine start and the generation: the "
                               "trainer's release (~4 s), the adapter's unzip and load into vLLM, the engine's "
                               "shutdown, the stage's records (the adapter's zip runs while the engine starts): "
                               "record h100-recipe-fullsize-r1-eval-sft, 2026-12-07")),
    "hf_batch16_step_s": (0.106, ("seconds a decode step of transformers generate through the hf engine at "
                                 "batch 16 (16 sequence slots, padding included), 256 steps measured on the "
                                 "lane: record h100-validation-hf-engine-batch16, 2026-12-07")),
    "trainer_reload_s": (120, ("assumed, not measured: reloading the 59 GiB model with the newest adapter for "
                              "the next training stage (no recipe-fullsize record has a training stage after "
                              "an eval yet)")),
}
SFT_ROW_TOKENS = 900  # prompt + solver trace, mean over the reference mix (bench/traces.py, tiny tokenizer)
GEN_TOKENS = 1_000  # mean completion of a trained model (traces are ~200-2,000 tokens)
# Validation completions: the estimated real trace lengths of a built mix, 100 per category, mean ~950 tokens
# (issue 22's probe). Their spread, for the hf engine's static batches (each waits for its longest): a
# lognormal of mean EVAL_TOKENS and sigma EVAL_SIGMA, capped at the 7,680 max_tokens, whose batch-16 longest is
# 3.06 slots per real token (the measured seed-h100-hf-engine-batch16: 10,600 s for 600 puzzles). An estimate
# fitted to one measurement; the lane's h100-validation-hf-engine-batch16 counted 3.20 on its own 600-puzzle set
# (mean 997 tokens; 12,917 s projected from its measured decode steps, where this plan says 3.2 h).
EVAL_TOKENS = 950
EVAL_SIGMA = 0.745
TRAIN_CSV_ROWS = 9_500  # the competition's train.csv, when eval.data is not on this machine
DAPO_REGEN = 1.5  # rollouts per kept rollout under dynamic sampling (assumed: ~1/3 of groups dropped)


def slots_per_token(batch: int, max_tokens: int = 7680, mean: float = EVAL_TOKENS, batches: int = 2000) -> float:
    """Static batching's cost: sequence slots the hf engine steps through per real token when every batch of
    ``batch`` waits for its longest completion (lengths: EVAL_SIGMA's lognormal; a fixed seed)."""
    import math
    import random

    rng, mu = random.Random(0), math.log(mean) - EVAL_SIGMA**2 / 2
    slots = real = 0.0
    for _ in range(batches):
        xs = [min(max_tokens, rng.lognormvariate(mu, EVAL_SIGMA)) for _ in range(batch)]
        slots, real = slots + batch * max(xs), real + sum(xs)
    return slots / real


def eval_rows(recipe) -> int:
    """Puzzles an eval scores: eval.limit, else the whole eval.data CSV (or train.csv's size), else the
    generated held-out set."""
    if not recipe.eval.data:
        return recipe.eval.n_generated
    path = recipe.paths.eval_data
    n = TRAIN_CSV_ROWS
    if path.exists():
        with open(path) as f:
            n = max(0, sum(1 for _ in f) - 1)  # header; a prompt spanning lines overcounts a little
    return min(recipe.eval.limit, n) if recipe.eval.limit else n


def max_num_seqs(recipe, stage: str) -> int:
    """eval.max_num_seqs for the eval; distillation samples at DISTILL_MAX_NUM_SEQS at least: its outputs are
    samples, not verdicts, so vLLM's batch-composition effect on greedy outputs (vllm#57267) costs nothing."""
    return recipe.eval.max_num_seqs if stage == "eval" else max(DISTILL_MAX_NUM_SEQS, recipe.eval.max_num_seqs)


DISTILL_MAX_NUM_SEQS = 256  # 1.6x the scorer's 64 (seed-h100-harness-seqs256)


def harness_rate(max_num_seqs: int) -> float:
    return RATES["harness_tok_s_seqs256" if max_num_seqs >= 256 else "harness_tok_s"][0]


def generation_work(recipe, stage: str) -> tuple[float, int, str]:
    """(tokens generated, prompts, what) of one ``stage`` ("eval" or "distill")."""
    if stage == "eval":
        n = eval_rows(recipe)
        return n * EVAL_TOKENS, n, f"{n:,} puzzles, greedy"
    d = recipe.distill
    return d.prompts * d.k * GEN_TOKENS, d.prompts, f"{d.prompts:,} x {d.k}"


def generation_hours(recipe, stage: str, runner: str) -> float:
    """Hours of the eval or distill ``stage`` through ``runner``. The harness: engine start + the stage's
    overhead (the trainer's release, the adapter's load) + the trainer's reload + tokens at the harness's
    measured rate (eval.max_num_seqs). The engine: the hf engine steps through slots (batch x each batch's
    longest completion) at its measured slot rate; vLLM colocated at its rate."""
    tokens, prompts, _ = generation_work(recipe, stage)
    if runner == "harness":
        return (RATES["harness_start_s"][0] + RATES["harness_overhead_s"][0] + RATES["trainer_reload_s"][0]
                + tokens / harness_rate(max_num_seqs(recipe, stage))) / 3600
    gen = recipe.generation
    if gen.engine == "vllm":
        return tokens / RATES["vllm_tok_s_unsloth" if recipe.model.backend == "unsloth" else "vllm_tok_s"][0] / 3600
    batch = gen.batch_size if stage == "eval" else max(1, gen.batch_size // recipe.distill.k) * recipe.distill.k
    # a decode step at the nearer measured batch: 16 (its record), else 64 (hf_tok_s: 64 slots a step); the
    # prefills (~1 s a batch) are left out
    step_s = RATES["hf_batch16_step_s"][0] if batch <= 32 else 64 / RATES["hf_tok_s"][0]
    max_tokens = recipe.eval.sampling.max_tokens if stage == "eval" else recipe.distill.max_tokens
    mean = tokens / max(1, prompts) / (1 if stage == "eval" else recipe.distill.k)
    return tokens * slots_per_token(batch, max_tokens, mean) / batch * step_s / 3600


def planned_runner(recipe, stage: str) -> tuple[str, str]:
    """What ``eval.runner`` / ``distill.runner`` resolves to on a CUDA machine with vllm (the one the plan is
    for; ``fastnemo.harness.choose`` first checks that this machine is one): (runner, why)."""
    setting = recipe.eval.runner if stage == "eval" else recipe.distill.runner
    if setting != "auto":
        return setting, f"{stage}.runner = {setting!r}"
    if stage == "eval":  # validation picks the submission: it runs as the scorer runs, even where slower
        return "harness", "auto: validation ranks checkpoints, so it runs the competition's harness"
    if recipe.model.backend == "unsloth" and recipe.generation.engine == "vllm":
        swap, resident = generation_hours(recipe, stage, "harness"), generation_hours(recipe, stage, "engine")
        return ("harness" if swap < resident else "engine"), (
            f"auto: the harness (engine start + reload) {swap * 60:.0f} min vs the resident shared-weights vLLM "
            f"{resident * 60:.0f} min")
    if stage == "distill" and recipe.model.backend != "hf":
        return "engine", f"auto: backend {recipe.model.backend!r} samples on its own engine"
    return "harness", "auto: vllm and a CUDA device"


CHAT_TOKENS = 40  # a drill request's chat frame: system and user turns, the instruction suffix, end of turn


def recall_plan(recipe) -> dict:
    """The recall stage's work: entries drilled, exposures per entry, tokens (estimated real tokens of each
    request, ``puzzles.audit.estimate_real_tokens``, plus its chat frame) and hours at ``recall_rate`` (packed
    drill rows train slower than trace rows), and what the coverage cut leaves out of the catalog."""
    from puzzles.recall import catalog_entries, entries
    from puzzles.traces import estimate_real_tokens

    r = recipe.recall
    drilled = entries(r.coverage, r.limit)
    per_pass = sum(estimate_real_tokens(e.prompt) + estimate_real_tokens(e.completion) + CHAT_TOKENS
                   for e in drilled)
    every = [e for e in catalog_entries() if e.kind == "cryptarithm"]
    kept = [e for e in drilled if e.kind == "cryptarithm"]
    rate = recall_rate(recipe)
    tokens = per_pass * r.exposures
    return {"entries": len(drilled), "exposures": r.exposures, "tokens_per_pass": per_pass, "tokens": tokens,
            "hours": tokens / rate / 3600, "signatures_left_out": len(every) - len(kept),
            "candidates_left_out": sum(int(e.answer) for e in every) - sum(int(e.answer) for e in kept),
            "prior_mass_left_out": max(0.0, 1.0 - sum(e.prior for e in kept)),
            "real_given_up": measured_give_up(r.coverage) if not r.limit else None}


def measured_give_up(coverage: float) -> str | None:
    """What bench/recall_coverage.py measured a coverage share to give up on train_dev's cryptarithms."""
    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "recall_coverage.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    row = next((p for p in data["coverage_keys"] if abs(p["coverage"] - coverage) < 1e-9), None)
    if row is None:
        return None
    return (f"{row['gives_up']} of {row['real_right']} right traces of train_dev's {row['real_n']} cryptarithms "
            "recall a left-out entry")


def recall_rate(recipe) -> float:
    """Tokens/s of the recall stage: packed drill rows measured at full size on backend hf with the full set
    (slower than trace rows at the same budget: rows fill to ~8k tokens); elsewhere the recipe's SFT rate
    scaled by the same ratio."""
    measured, traces = RATES["train_tok_s_recall_packed"][0], RATES["train_tok_s_hf_budget_experts"][0]
    return RATES[train_rate_key(recipe)][0] * measured / traces


def train_rate_key(recipe) -> str:
    key = f"train_tok_s_{recipe.model.backend}"
    if getattr(recipe.sft, "token_budget", 0):
        key += "_budget_experts" if recipe.model.backend == "hf" and recipe.lora.train_experts else "_budget"
    return key


def time_plan(recipe) -> list[tuple[str, float, str]]:
    """(stage, hours, how) for one round of ``recipe``'s stages, from RATES."""
    backend = recipe.model.backend
    if recipe.generation.engine != "vllm":
        gen_rate = RATES["hf_tok_s"][0]
    else:  # Unsloth's vLLM shares the card with the trainer: a smaller KV pool, a lower rate
        gen_rate = RATES["vllm_tok_s_unsloth" if backend == "unsloth" else "vllm_tok_s"][0]
    train_rate = RATES[train_rate_key(recipe)][0]
    distills = "distill" in recipe.stages
    if distills:  # verified traces (~half the prompts at a mid-training pass rate) + the carried share
        rows = recipe.distill.prompts * 0.5 * recipe.distill.keep * (1 + recipe.distill.carry_share)
    else:
        rows = recipe.data.n * 0.8  # ~80 % of generated puzzles survive as deduced traces
    out = []
    for stage in dict.fromkeys(recipe.stages):
        if stage == "recall":
            rp = recall_plan(recipe)
            what = f"{rp['entries']:,} entries x {rp['exposures']} exposures, ~{rp['tokens'] / 1e6:.1f}M tokens"
            out.append((stage, rp["hours"], what))
        elif stage == "data" and distills:
            out.append((stage, 0.0, f"mix ~{rows:,.0f} verified + carried rows"))
        elif stage == "data":
            out.append((stage, recipe.data.n / RATES["build_rows_s"][0] / 3600, f"{recipe.data.n:,} puzzles"))
        elif stage == "sft":
            tokens = rows * SFT_ROW_TOKENS * recipe.sft.epochs
            out.append((stage, tokens / train_rate / 3600, f"~{tokens / 1e6:.0f}M tokens"))
        elif stage in ("eval", "distill"):
            runner, _ = planned_runner(recipe, stage)
            what = generation_work(recipe, stage)[2]
            out.append((stage, generation_hours(recipe, stage, runner), f"{what}, {runner}"))
        elif stage == "grpo":
            g = recipe.grpo
            tokens = g.max_steps * g.batch_prompts * g.group_size * GEN_TOKENS
            # rollouts (dynamic sampling regenerates the groups without reward spread: DAPO_REGEN more), then
            # one forward for the old log-probs (~1/3 of a training step's forward+backward) and the update,
            # whose completions come G at a time: the token-budget rate rather than batch 1
            regen = DAPO_REGEN if g.dynamic_sampling else 1.0
            update_rate = RATES["train_tok_s_hf_budget"][0] if recipe.model.backend == "hf" else train_rate
            hours = tokens * regen / gen_rate / 3600 + (4 / 3) * tokens / update_rate / 3600
            out.append((stage, hours, f"{g.max_steps} steps x {g.batch_prompts} x {g.group_size}"))
    return out


def validation_lines(recipe) -> list[str]:
    """The whole train.csv through the harness at 64 and 256 sequences, and through the hf engine."""
    import dataclasses

    whole = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, limit=0,
                                                                 data=recipe.eval.data or "train.csv"))
    out = []
    for seqs in (64, 256):
        r = dataclasses.replace(whole, eval=dataclasses.replace(whole.eval, max_num_seqs=seqs))
        out.append(f"whole train.csv ({eval_rows(whole):,} rows) through the harness at max_num_seqs {seqs}: "
                   f"{generation_hours(r, 'eval', 'harness') * 60:.0f} min")
    hf = dataclasses.replace(whole, generation=dataclasses.replace(whole.generation, engine="hf"))
    out.append(f"... through the hf engine at generation.batch_size {recipe.generation.batch_size}: "
               f"{generation_hours(hf, 'eval', 'engine'):.1f} h")
    return out


def full_set_on_hf(recipe):
    """``recipe`` on backend "hf" with the winners' full set (lm_head + routed experts, both memory levers),
    the hf engine and the harness for eval and distill: the only backend that trains that set."""
    import dataclasses

    return dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, backend="hf", load_in_4bit=False),
        lora=dataclasses.replace(recipe.lora, train_experts=True, optimizer_8bit=True, bf16_weights=True),
        generation=dataclasses.replace(recipe.generation, engine="hf"))


def shared_weights_on_unsloth(recipe):
    """``recipe`` on backend "unsloth" with its resident vLLM (shared weights, routed experts frozen)."""
    import dataclasses

    return dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, backend="unsloth"),
        lora=dataclasses.replace(recipe.lora, train_experts=False),
        generation=dataclasses.replace(recipe.generation, engine="vllm", gpu_memory_utilization=0.85))


def backend_lines(recipe) -> list[str]:
    """One round's hours on each backend (only "hf" trains the full set: lm_head + routed experts)."""
    out = []
    for name, variant in (("hf (full set, harness for eval/distill)", full_set_on_hf),
                          ("unsloth (shared-weights vLLM, experts frozen)", shared_weights_on_unsloth)):
        r = variant(recipe)
        rows, mem = time_plan(r), plan_recipe(r)
        parts = ", ".join(f"{s} {h:.1f}" for s, h, _ in rows)
        fits = "fits" if mem.fits else f"does NOT fit: {mem.notes[-1]}"
        out.append(f"backend {name}: {sum(h for _, h, _ in rows):.1f} h a round ({parts}); {fits}")
    return out


def hours_text(hours: float) -> str:
    """Hours as a person reads them: "0", "< 0.1", "2.3"."""
    return "0" if hours == 0 else "< 0.1" if hours < 0.05 else f"{hours:.1f}"


def time_table(recipe):
    from rich.table import Table

    t = Table(title=f"wall-clock plan on one H100, one round (estimate; engine {recipe.generation.engine})")
    for col in ("stage", "hours", "work"):
        t.add_column(col, justify="right" if col == "hours" else "left")
    for stage, hours, how in time_plan(recipe):
        t.add_row(stage, hours_text(hours), how)
    return t


def rates_line() -> str:
    """The rates behind the time plan, one line (a table caption would wrap them at the table's width)."""
    return "rates: " + "; ".join(f"{k} = {v[0]:,}" for k, v in RATES.items()) + " (see fastnemo/plan.py RATES)"
