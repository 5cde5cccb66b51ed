"""The full 52-layer Nemotron-3-Nano on the GPU lane, random weights, memory capped like an 80 GB card.

    python3 bench/device/fullsize.py vllm --results R.jsonl     # vLLM 0.26 from the config (load_format dummy)
    python3 bench/device/fullsize.py hf --results R.jsonl       # transformers generate vs the hf engine, SFT
    python3 bench/device/fullsize.py hf --parts sft --rows recall --results R.jsonl  # SFT on packed recall rows
    python3 bench/device/fullsize.py unsloth --results R.jsonl  # Unsloth fast_inference, weights in /dev/shm

Why a script of its own: the released model is 59 GiB of bf16 weights and the lane machine has 64 GiB of
disk, so nothing here is saved. vLLM starts from config.json alone (``load_format="dummy"``) and the
training model is built on the GPU from the same config (``from_config``, random init), with LoRA r32 on
fastnemo's default targets. The two cannot share one 80 GB card as separate copies (2 x 59 GiB): in the
recipes they share weights through Unsloth ``fast_inference``, whose loader needs the weights on disk, so
the Unsloth form is not measured at full size (the engine tests cover it on a slice).

Each measurement appends one record to ``--results`` (bench/results.py: bench, variant, engine, backend,
layers, gpu, memory_cap_gib, batch, prompt_len, new_tokens, tok_s, peak_gib, date) as soon as it is made.
``--layers N`` takes the first N layers of the pattern (a CPU/GPU smoke run; the lane uses all 52).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch

from bench import results

CAP_GIB = 79.2  # an 80 GB card's usable memory (torch reports 79.2 GiB for an H100 80GB)
GIB = 1 << 30


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def total_gib() -> float:
    return torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else 0.0


def model_dir(layers: int, root: Path, tiny: bool = False) -> Path:
    """config.json + the tiny tokenizer for the first ``layers`` layers of the released pattern (``tiny``:
    at fastnemo.tiny's toy widths, the CPU dry run of this script)."""
    from bench.common import slice_config, slice_layers
    from fastnemo.tiny import _corpus, tiny_config, train_tokenizer

    out = root / f"nano-{layers}"
    if (out / "config.json").exists():
        return out
    tok = train_tokenizer(_corpus(n=200, seed=0), vocab_size=1024)
    ids = tok.convert_tokens_to_ids
    special = {"pad_token_id": ids("<pad>"), "bos_token_id": ids("<s>"), "eos_token_id": ids("<|im_end|>")}
    if tiny:
        cfg = tiny_config(len(tok), layers_block_type=slice_layers(str(layers)), **special)
    else:
        cfg = slice_config(slice_layers(str(layers)), **special)
    cfg.architectures = ["NemotronHForCausalLM"]  # vLLM picks the model class from this (save_pretrained of a
    # bare config writes none, and vLLM then takes the folder for a pooling model)
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prompt_ids(tok, n: int, seed: int = 0) -> list[list[int]]:
    """Real puzzle prompts (generated, six categories), chat-rendered as the competition does."""
    from bench.common import puzzle_prompts, render_prompt

    return [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in puzzle_prompts(n, seed)]


def _sync_reset(reset: bool = True) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        if reset:
            import gc

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def base_record(bench: str, layers: int, **kw) -> dict:
    return results.record(bench, layers=layers, gpu=gpu_name(), memory_cap_gib=CAP_GIB,
                          source="bench/device/fullsize.py", **kw)


# ------------------------------------------------------------------------------------------------- vLLM


def random_adapter(path: Path, out: Path, rank: int = 32) -> Path:
    """A PEFT adapter folder (r=rank, fastnemo's default targets, random A and B) for the model at ``path``,
    built on the meta device (no weights): what vLLM's LoRA path loads for a trained adapter."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from fastnemo.targets import DEFAULT_TARGETS

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=list(DEFAULT_TARGETS)))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            key = name.replace(".default", "").replace("base_model.model.model.", "base_model.model.backbone.")
            tensors[key] = (torch.randn(p.shape, generator=g) * 0.01).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    peft_model.peft_config["default"].save_pretrained(out)
    return out


def run_vllm(args) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    root = Path(tempfile.mkdtemp(prefix="fullsize-"))
    path = model_dir(args.layers, root)
    adapter = random_adapter(path, root / "adapter")
    util = round(CAP_GIB / total_gib(), 4)
    t0 = time.perf_counter()
    llm = LLM(model=str(path), load_format="dummy", dtype="bfloat16", max_model_len=8192, max_num_seqs=256,
              gpu_memory_utilization=util, enable_lora=True, max_lora_rank=32, max_loras=1,
              enable_sleep_mode=True, enable_prefix_caching=True, seed=0)
    start_s = time.perf_counter() - t0
    print(f"engine started in {start_s:.1f} s (gpu_memory_utilization {util})", flush=True)
    tok = llm.get_tokenizer()
    lora = LoRARequest("adapter", 1, str(adapter))
    shapes = [  # (name, prompts, n, temperature, new tokens): the recipes' shapes
        ("eval", args.eval_prompts, 1, 0.0, args.eval_tokens),
        ("distill", args.group_prompts, 8, 0.7, args.group_tokens),
        ("dapo", args.group_prompts, 8, 1.0, args.group_tokens),
    ]
    for name, n_prompts, n, temp, new in shapes:
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids(tok, n_prompts, seed=len(name))]
        sp = SamplingParams(n=n, temperature=temp, top_p=1.0, max_tokens=new, min_tokens=new, ignore_eos=True,
                            seed=0, detokenize=False)
        llm.generate(prompts[:2], sp, lora_request=lora, use_tqdm=False)  # warm the LoRA slot + graphs
        llm.reset_prefix_cache()
        torch.cuda.synchronize()
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, lora_request=lora, use_tqdm=False)
        secs = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        plen = sum(len(p["prompt_token_ids"]) for p in prompts) / len(prompts)
        rec = base_record("generation", args.layers, variant=f"vllm-{name}", engine="vllm", backend="vllm 0.26.0",
                          batch=n_prompts * n, prompt_len=round(plen), new_tokens=new, tok_s=tokens / secs,
                          peak_gib=round(util * total_gib(), 1), seconds=secs, tokens=tokens, temperature=temp,
                          n=n, lora="r32 default targets", engine_start_s=start_s,
                          note="max_num_seqs 256, LoRA r32, ignore_eos; peak = vLLM's reserved share")
        results.append(args.results, rec)
        print(json.dumps(rec), flush=True)
    # the phase switch, vLLM's side: sleep hands the memory back to training, wake restores it
    for level in (1, 2):
        free0 = torch.cuda.mem_get_info()[0]
        t = time.perf_counter()
        llm.sleep(level=level)
        sleep_s = time.perf_counter() - t
        free1 = torch.cuda.mem_get_info()[0]
        t = time.perf_counter()
        llm.wake_up()
        wake_s = time.perf_counter() - t
        rec = base_record("phase_switch", args.layers, variant=f"vllm-sleep-level{level}", engine="vllm",
                          backend="vllm 0.26.0", sleep_s=sleep_s, wake_s=wake_s, freed_gib=(free1 - free0) / GIB,
                          engine_start_s=start_s,
                          note="level 2 drops the weights: the trainer re-sends them (weight_sync merge) after wake")
        results.append(args.results, rec)
        print(json.dumps(rec), flush=True)


# ------------------------------------------------------------------------------- Unsloth shared weights


def saved_model(layers: int, weights_dir: Path) -> tuple[Path, float]:
    """The first ``layers`` layers with random weights on disk (config, tiny tokenizer, safetensors: what a
    loader that reads weights from disk needs), built on the GPU once; (its folder, seconds to save)."""
    path = model_dir(layers, weights_dir)
    t = time.perf_counter()
    save_once(path, lambda out: _save_random_weights(path, out))
    return path, time.perf_counter() - t


SAVED = ".weights-saved"  # written last: a folder without it holds at most a save that was cut short


def save_once(path: Path, save) -> None:
    """``save(out)`` writes the weights into an empty folder, moved into ``path`` when it returns. One saver at
    a time: a second process (the recipe, started while the lane's ``save-weights`` step still saves during
    the staging calls) waits on the lock and then finds the weights there instead of loading half of them."""
    import fcntl
    import shutil

    with open(path / ".save.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / SAVED).exists():
            return
        out = path / ".partial"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        save(out)
        for f in out.iterdir():
            os.replace(f, path / f.name)
        out.rmdir()
        (path / SAVED).touch()


def _save_random_weights(path: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="5GB")
    del model
    _sync_reset()


def run_unsloth(args) -> None:
    """Unsloth ``fast_inference``: one copy of the weights, trained by Unsloth and served by its vLLM.
    Its loader reads weights from disk, so the random full model is saved to ``--weights-dir`` first: by
    default /dev/shm, a RAM disk (the lane has 64 GiB of disk and 128 GiB of RAM; the bf16 model is 59 GiB)."""

    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SamplingConfig
    from fastnemo.session import ModelSession

    torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB / total_gib()))
    path, save_s = saved_model(args.layers, Path(args.weights_dir))
    # Unsloth's standby default is ~0.88 of the card (vllm >= 0.11: 0.925 x 0.95); the same share of the
    # user's card, scaled to the cap (fastnemo sets UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE so it is taken as is)
    util = round(args.unsloth_share * CAP_GIB / total_gib(), 4)
    t = time.perf_counter()
    session = ModelSession.load(path, ModelConfig(path=str(path), backend="unsloth", max_seq_length=8192),
                                LoraConfig(rank=32, alpha=32),
                                GenerationConfig(engine="vllm", gpu_memory_utilization=util,
                                                 batch_size=args.unsloth_seqs))
    texts = [session.tokenizer.decode(p) for p in prompt_ids(session.tokenizer, args.eval_prompts, seed=1)]
    session.engine.generate(texts[:2], SamplingConfig(max_tokens=8))  # the engine starts on first use
    load_s = time.perf_counter() - t
    print(f"saved in {save_s:.0f} s; Unsloth + vLLM loaded and started in {load_s:.0f} s "
          f"(gpu_memory_utilization {util} = {args.unsloth_share} of a {CAP_GIB} GiB card)", flush=True)
    backend = "unsloth fast_inference (vllm 0.26.0)"
    shapes = [("eval", args.eval_prompts, 1, 0.0, args.eval_tokens),
              ("distill", args.group_prompts, 8, 0.7, args.group_tokens)]
    for name, n_prompts, n, temp, new in shapes:
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = session.engine.generate(texts[:n_prompts], SamplingConfig(n=n, temperature=temp, max_tokens=new))
        secs = time.perf_counter() - t
        tokens = sum(c.n_tokens for r in out for c in r)
        rec = base_record("generation", args.layers, variant=f"unsloth-vllm-{name}", engine="vllm",
                          backend=backend, batch=n_prompts * n, new_tokens=new, prompt_len=None,
                          tok_s=tokens / secs, peak_gib=_used_gib(), seconds=secs, tokens=tokens,
                          temperature=temp, n=n, lora="r32 default targets (lm_head left out)", load_s=load_s,
                          max_num_seqs=args.unsloth_seqs, weights=args.weights_dir, gpu_memory_utilization=util,
                          note="shared weights (one copy); no forced lengths: random weights rarely emit EOS; "
                               "peak = GPU memory in use (vLLM pool + trainer)")
        results.append(args.results, rec)
        print(json.dumps(rec), flush=True)
    if "sft" not in args.parts:
        return
    # the phase switch the rounds make: sleep, SFT on the shared weights, wake, sync the LoRA, generate
    greedy = SamplingConfig(max_tokens=32)
    before = session.engine.generate(texts[:4], greedy)
    used0 = _used_gib()
    t = time.perf_counter()
    session.engine.sleep()
    sleep_s = time.perf_counter() - t
    freed = used0 - _used_gib()
    args.targets_name = "default (winners' 9 modules; lm_head left out on unsloth)"
    for budget in args.budgets[:1]:
        sft_variant(args, session, f"unsloth-shared-budget{budget}", sft_rows(args.sft_rows), budget, 1,
                    plain_trl=False)
    t = time.perf_counter()
    session.engine.wake()
    wake_s = time.perf_counter() - t
    t = time.perf_counter()
    session.engine.sync_weights()
    sync_s = time.perf_counter() - t
    after = session.engine.generate(texts[:4], greedy)
    changed = sum(a[0].text != b[0].text for a, b in zip(after, before))
    rec = base_record("phase_switch", args.layers, variant="unsloth-vllm-sleep-train-wake", engine="vllm",
                      backend=backend, sleep_s=sleep_s, wake_s=wake_s, sync_s=sync_s, freed_gib=freed,
                      engine_start_s=load_s, peak_gib=_peak(), gpu_memory_utilization=util,
                      greedy_changed_after_training=f"{changed}/4",
                      note="fastnemo's engine.sleep() (level 1: the KV cache goes, the shared weights stay), "
                           f"{args.sft_steps} SFT steps, wake, sync_weights (the trained LoRA into vLLM), greedy")
    results.append(args.results, rec)
    print(json.dumps(rec), flush=True)


def _used_gib() -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free) / GIB


# -------------------------------------------------------------------------------------- transformers / SFT


def build_model(path: Path, targets: list[str], train_experts: bool = False, levers: bool = False):
    """The full model on the GPU from its config (random init), LoRA r32 on ``targets``, as a ModelSession.
    ``levers``: the memory levers of ``fastnemo plan`` that training implements (``lora.bf16_weights``: LoRA
    weights and grads in bf16; ``lora.optimizer_8bit``: bitsandbytes' 8-bit AdamW, read by ``sft.train``)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from fastnemo import lora
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig
    from fastnemo.patches.peft import allow_out_proj
    from fastnemo.session import ModelSession
    from fastnemo.targets import EXPERT_PARAMETERS

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16,
                                                 experts_implementation="grouped_mm")
    peft_cfg = PeftLoraConfig(r=32, lora_alpha=32, target_modules=list(targets), task_type="CAUSAL_LM",
                              target_parameters=list(EXPERT_PARAMETERS) if train_experts else None)
    with allow_out_proj():  # what session._load_hf does: the same routes for out_proj/lm_head/experts
        model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=not levers)
    lora.install(model)
    tok = AutoTokenizer.from_pretrained(path)
    return ModelSession(model, tok, ModelConfig(path=str(path), backend="hf"),
                        GenerationConfig(engine="hf", batch_size=64), path,
                        LoraConfig(target_modules=list(targets), train_experts=train_experts,
                                   optimizer_8bit=levers, bf16_weights=levers))


def gen_records(args, session) -> None:
    """transformers ``generate`` on the PEFT model vs fastnemo's hf engine (``session.generate``)."""
    from fastnemo.config import SamplingConfig

    model, tok = session.model, session.tokenizer
    prompts = prompt_ids(tok, args.hf_prompts, seed=1)
    texts = [tok.decode(p) for p in prompts]
    model.eval()
    new = args.hf_tokens

    def plain():
        tok.padding_side = "left"
        enc = tok.pad({"input_ids": prompts}, return_tensors="pt").to(session.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())

    def engine():
        out = session.engine.generate(texts, SamplingConfig(n=1, temperature=0.0, max_tokens=new))
        return sum(c.n_tokens for r in out for c in r)

    for variant, fn, eng in (("transformers-generate", plain, "transformers"), ("fastnemo-hf-engine", engine, "hf")):
        fn_small = new
        _sync_reset()
        t = time.perf_counter()
        tokens = fn()
        _sync_reset(reset=False)
        secs = time.perf_counter() - t
        rec = base_record("generation", args.layers, variant=f"{variant}-eval", engine=eng, backend="hf",
                          batch=len(prompts), prompt_len=round(sum(map(len, prompts)) / len(prompts)),
                          new_tokens=fn_small, tok_s=tokens / secs, peak_gib=_peak(),
                          seconds=secs, tokens=tokens, temperature=0.0, lora="r32 default targets",
                          note="greedy; first call of the process includes the Mamba kernels' warm-up")
        results.append(args.results, rec)
        print(json.dumps(rec), flush=True)


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Puzzle + solver trace rows: the real trace-length distribution of a built mix (no padding up)."""
    from puzzles import categories

    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        puzzle = categories.generate(categories.CATEGORIES[len(rows) % len(categories.CATEGORIES)], rng)
        solution = categories.solve(puzzle)
        if solution is None:
            continue
        try:
            rows.append({"prompt": puzzle.prompt, "completion": categories.trace(puzzle, solution)})
        except ValueError:  # puzzles.base.NotTeachable: a cryptarithm with no recall trace
            continue
    return rows


class StepClock:
    """A TrainerCallback: wall time and real (non-pad) tokens of each optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                _sync_reset(reset=False)
                clock.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync_reset(reset=False)
                clock.steps.append(time.perf_counter() - clock.t)

        self.steps: list[float] = []
        self.callback = CB()


def recall_rows(session, n: int, max_length: int = 8192) -> list[dict]:
    """``n`` packed recall rows of the real catalog (``fastnemo.recall.pack_rows``, the recall stage's rows:
    up to 16 requests and ``max_length`` tokens each, the loss on every answer), one pass in drill order's
    shuffle."""
    from fastnemo import recall
    from puzzles.recall import entries

    return recall.pack_rows(session, entries(), 1, 16, max_length, seed=0)[:n]


def sft_variant(args, session, variant: str, rows, token_budget: int, batch: int, plain_trl: bool) -> None:
    """One SFT measurement: fastnemo ``sft.train`` (or plain TRL SFTTrainer on the same PEFT model),
    ``args.sft_steps`` optimizer steps, the first one apart (Triton autotuning, compile)."""
    from fastnemo import sft
    from fastnemo.config import SFTConfig

    clock = StepClock()
    cfg = SFTConfig(learning_rate=2e-4, max_steps=args.sft_steps, batch_size=batch, grad_accum=1,
                    max_length=8192, warmup=0.0, save_steps=10_000, logging_steps=1, token_budget=token_budget)
    out = Path(tempfile.mkdtemp(prefix=f"sft-{variant}-"))
    dataset = sft.to_dataset(session, rows)
    _sync_reset()
    if plain_trl:
        from trl import SFTConfig as TRLSFTConfig
        from trl import SFTTrainer

        targs = TRLSFTConfig(output_dir=str(out), learning_rate=2e-4, max_steps=args.sft_steps,
                             per_device_train_batch_size=batch, gradient_accumulation_steps=1, max_length=8192,
                             bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
                             gradient_checkpointing=True, report_to="none", save_strategy="no",
                             logging_steps=1, disable_tqdm=True)
        trainer = SFTTrainer(model=session.model, args=targs, train_dataset=dataset,
                             processing_class=session.tokenizer, callbacks=[clock.callback])
        trainer.train()
        lengths = [min(len(x), 8192) for x in trainer.train_dataset["input_ids"]]
    else:
        import trl

        made = []
        base_cls = trl.SFTTrainer

        class Clocked(base_cls):  # sft.train builds it; the clock rides along as a callback
            def __init__(self, *a, **kw):
                kw["callbacks"] = [*kw.get("callbacks", []), clock.callback]
                super().__init__(*a, **kw)
                made.append(self)

        trl.SFTTrainer = Clocked
        try:
            sft.train(session, rows, cfg, out)
        finally:
            trl.SFTTrainer = base_cls
        lengths = [min(len(x), 8192) for x in made[0].train_dataset["input_ids"]]
    timed = clock.steps[1:]
    # tokens per step: each step takes one batch; the mean real tokens of a batch = total / batches
    n_batches = len(timed) + 1
    mean_row = sum(lengths) / len(lengths)
    rows_per_step = batch if not token_budget else len(lengths) / max(1, _n_budget_batches(lengths, token_budget))
    tok_per_step = rows_per_step * mean_row
    step_s = sorted(timed)[len(timed) // 2] if timed else float("nan")
    rec = base_record("sft", args.layers, variant=variant, engine=None, backend=session.model_cfg.backend,
                      batch=(f"budget {token_budget}" if token_budget else batch), prompt_len=None,
                      new_tokens=None, tok_s=tok_per_step / step_s, peak_gib=_peak(),
                      first_step_s=clock.steps[0] if clock.steps else None, step_s=step_s, steps=n_batches,
                      mean_row_tokens=mean_row, rows_per_step=rows_per_step,
                      targets=args.targets_name, trainable=sum(p.numel() for p in session.model.parameters()
                                                               if p.requires_grad),
                      note="median step; tokens/step = rows/step x mean row length (real tokens, no padding)")
    results.append(args.results, rec)
    print(json.dumps(rec), flush=True)


def _n_budget_batches(lengths, budget):
    from fastnemo.batching import token_budget_batches

    return len(token_budget_batches(lengths, budget))


def run_hf(args) -> None:
    from fastnemo.targets import DEFAULT_TARGETS, FULL_TARGETS

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB / total_gib()))
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    root = Path(tempfile.mkdtemp(prefix="fullsize-"))
    path = model_dir(args.layers, root, tiny=args.tiny)
    t = time.perf_counter()
    full = args.targets == "full"
    session = build_model(path, list(FULL_TARGETS if full else DEFAULT_TARGETS), train_experts=full,
                          levers=args.levers)
    print(f"built {args.layers} layers on the GPU in {time.perf_counter() - t:.1f} s; "
          f"{torch.cuda.memory_allocated() / GIB:.1f} GiB", flush=True)
    args.targets_name = ("full (lm_head, out_proj, routed experts)" if full else "default (winners' 9 modules)") + (
        " + 8-bit AdamW + bf16 LoRA" if args.levers else "")
    if "gen" in args.parts:
        gen_records(args, session)
    if "sft" in args.parts:
        session.model.train()
        rows = recall_rows(session, args.sft_rows) if args.rows == "recall" else sft_rows(args.sft_rows)
        tag = ("-full" if full else "-default9") + ("-levers" if args.levers else "") + (
            "-recall-packed" if args.rows == "recall" else "")
        runs = [] if args.no_batch1 else [(f"fastnemo-batch1{tag}", 0, False)]
        if not full and not args.skip_trl:  # plain TRL: the same model, its own SFTTrainer
            runs.append(("trl-batch1", 0, True))
        runs += [(f"fastnemo-budget{b}{tag}", b, False) for b in args.budgets]
        for variant, budget, plain in runs:
            try:
                sft_variant(args, session, variant, rows, budget, 1, plain_trl=plain)
            except torch.OutOfMemoryError as e:  # a record too: what does not fit under the cap
                rec = base_record("sft", args.layers, variant=variant, backend="hf", batch=f"budget {budget}"
                                  if budget else 1, tok_s=None, peak_gib=_peak(), targets=args.targets_name,
                                  note=f"out of memory under the {CAP_GIB} GiB cap: {str(e)[:160]}")
                results.append(args.results, rec)
                print(json.dumps(rec), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["vllm", "hf", "unsloth"])
    ap.add_argument("--results", required=True)
    ap.add_argument("--layers", type=int, default=52)
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--group-prompts", type=int, default=32)
    ap.add_argument("--group-tokens", type=int, default=1024)
    ap.add_argument("--hf-prompts", type=int, default=64)
    ap.add_argument("--hf-tokens", type=int, default=128)
    ap.add_argument("--sft-rows", type=int, default=256)
    ap.add_argument("--sft-steps", type=int, default=6)
    ap.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",") if x], default=[8192, 16384])
    ap.add_argument("--parts", default="gen,sft")
    ap.add_argument("--tiny", action="store_true", help="Toy widths (a CPU dry run of the code paths).")
    ap.add_argument("--targets", choices=["default", "full"], default="default")
    ap.add_argument("--weights-dir", default="/dev/shm/fullsize", help="unsloth: where the random weights are saved")
    ap.add_argument("--unsloth-seqs", type=int, default=64, help="unsloth: vLLM's max_num_seqs")
    ap.add_argument("--unsloth-share", type=float, default=0.85,
                    help="unsloth: vLLM's share of the user's card (scaled to the cap on a bigger GPU)")
    ap.add_argument("--levers", action="store_true", help="8-bit AdamW + bf16 LoRA weights (fastnemo plan's levers)")
    ap.add_argument("--skip-trl", action="store_true", help="no plain-TRL batch-1 run (already measured)")
    ap.add_argument("--no-batch1", action="store_true", help="only the token-budget runs")
    ap.add_argument("--rows", choices=["traces", "recall"], default="traces",
                    help="hf sft: puzzle + trace rows, or the recall stage's packed drill rows of the real catalog")
    args = ap.parse_args()
    {"vllm": run_vllm, "hf": run_hf, "unsloth": run_unsloth}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
