"""The ``fastnemo`` command line. Each command is a thin layer over one module; ``recipe`` runs them all."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fastnemo.config import (
    MAX_LORA_RANK,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    RecipeError,
    SamplingConfig,
)

# Quiet transformers' kernel-fallback warnings and tqdm bars: rich bars and tables carry progress instead.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars follow it
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _fail(msg: str):
    raise click.ClickException(msg)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fastnemo")
def main():
    """fastnemo: a LoRA for Nemotron-3-Nano that solves the Wonderland puzzles, on one H100.

    \b
    Start here:
      fastnemo recipe recipes/smoke.toml      tiny model, CPU, minutes: data -> SFT -> eval -> zip
      fastnemo recipe --check recipes/round1.toml   validate a recipe, print its plan and memory plan
    """


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Validate the recipe and print the resolved plan; run nothing.")
def recipe(recipe_file, check):
    """Run (or resume) every stage of RECIPE_FILE in its run directory.

    Re-running the same command skips finished stages and resumes an interrupted one. The run directory
    gets the resolved config, manifest.json, metrics.jsonl, plots and, at the end, submission.zip.
    """
    from fastnemo.config import load_recipe, resolve

    try:
        r = load_recipe(recipe_file)
    except RecipeError as e:
        _fail(str(e))
    if r.model.backend == "unsloth" and not check:
        from fastnemo.unsloth_backend import import_first

        import_first(vllm_engine=r.generation.engine == "vllm")
    from fastnemo.progress import console
    from fastnemo.recipe import plan_keys, preflight, run_recipe
    if check:
        console.print(f"[bold]{r.name}[/]: run directory {resolve(r, r.run_dir)}")
        for rnd, stage, key in plan_keys(r):
            console.print(f"  round {rnd}  {stage:8s} -> {key}")
        from fastnemo.plan import plan_recipe, plan_table, time_table

        console.print(plan_table(plan_recipe(r)))
        console.print(time_table(r))
        try:
            for note in preflight(r):
                console.print(f"  {note}")
        except RecipeError as e:
            _fail(str(e))
        console.print("[green]recipe ok")
        return
    from fastnemo.run import RunLocked

    try:
        run = run_recipe(r)
    except (RunLocked, RecipeError, RuntimeError, FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        _fail(f"{type(e).__name__}: {e}" if isinstance(e, OSError) and e.errno else str(e))
    sub = run.path / "pack" / "submission.zip"
    if sub.exists():
        console.print(f"[bold green]submission:[/] {sub}")


@main.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--vocab-size", default=1024, show_default=True)
def tiny_model(out_dir, seed, vocab_size):
    """Build a tiny random nemotron_h model (Mamba + attention + MoE) and a locally trained tokenizer in
    OUT_DIR, for CPU runs and tests. Refuses to overwrite an existing model."""
    from fastnemo.tiny import build_tiny_model

    try:
        path = build_tiny_model(out_dir, seed=seed, vocab_size=vocab_size)
    except FileExistsError as e:
        _fail(str(e))
    click.echo(f"tiny nemotron_h model written to {path}")


def _model_options(f):
    f = click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False),
                     help="Base model folder (config.json, weights, tokenizer).")(f)
    f = click.option("--adapter", type=click.Path(exists=True, file_okay=False),
                     help="Start from this LoRA adapter folder instead of a fresh LoRA.")(f)
    f = click.option("--backend", type=click.Choice(["hf", "unsloth"]), default="hf", show_default=True)(f)
    return f


def _session(model_path, adapter, backend, rank=32, engine="hf"):
    from fastnemo.session import ModelSession

    return ModelSession.load(model_path, ModelConfig(path=model_path, backend=backend),
                             LoraConfig(rank=rank, alpha=rank), GenerationConfig(engine=engine), adapter=adapter)


@main.command()
@_model_options
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SFT rows (JSONL with prompt and completion, as `fastnemo data build` writes).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (adapter/, checkpoints/).")
@click.option("--rank", default=32, show_default=True, type=click.IntRange(1, MAX_LORA_RANK))
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--max-steps", default=-1, show_default=True, help="Stop after N optimizer steps (-1: epochs).")
@click.option("--batch-size", default=1, show_default=True)
@click.option("--grad-accum", default=8, show_default=True)
@click.option("--max-length", default=8192, show_default=True)
def sft(model_path, adapter, backend, data, out, rank, lr, epochs, max_steps, batch_size, grad_accum, max_length):
    """Supervised fine-tuning of a LoRA on DATA; writes OUT/adapter. Resumes from OUT/checkpoints."""
    from fastnemo import sft as sft_mod
    from fastnemo.config import SFTConfig
    from puzzles.dataset import read_jsonl

    if (Path(out) / "adapter").exists():  # before loading the model, not after training
        _fail(f"{Path(out) / 'adapter'} exists; refusing to overwrite it (choose another --out)")
    session = _session(model_path, adapter, backend, rank)
    cfg = SFTConfig(learning_rate=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                    grad_accum=grad_accum, max_length=max_length)
    summary = sft_mod.train(session, read_jsonl(data), cfg, Path(out) / "checkpoints")
    try:
        session.save_adapter(Path(out) / "adapter")
    except FileExistsError as e:
        _fail(str(e))
    click.echo(json.dumps(summary))


@main.command("eval")
@_model_options
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Validation CSV with id,prompt,answer (the competition's train.csv).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for results.jsonl and summary.json.")
@click.option("--limit", default=0, show_default=True, help="At most N rows, stratified by category (0: all).")
@click.option("--max-tokens", default=7680, show_default=True, help="The competition scores with 7680.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
def eval_cmd(model_path, adapter, backend, data, out, limit, max_tokens, batch_size, engine):
    """Score a model (+ adapter) on DATA with the competition's metric: greedy, boxed answer, 1e-2 tolerance."""
    from fastnemo.evaluate import evaluate, stratified
    from fastnemo.files import write_json
    from puzzles.dataset import load_csv

    try:
        puzzles = stratified(load_csv(data, require_answer=True), limit)
    except ValueError as e:
        _fail(str(e))
    session = _session(model_path, adapter, backend, engine=engine)
    Path(out).mkdir(parents=True, exist_ok=True)
    summary = evaluate(session, puzzles, SamplingConfig(max_tokens=max_tokens), Path(out) / "results.jsonl",
                       batch_size=batch_size)
    write_json(Path(out) / "summary.json", summary)


@main.command()
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="submission.zip", show_default=True, type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing zip at --out.")
def pack(adapter_dir, out, overwrite):
    """Zip ADAPTER_DIR's adapter_config.json and adapter_model.safetensors into a submission."""
    from fastnemo.pack import PackError
    from fastnemo.pack import pack as pack_fn

    try:
        path = pack_fn(adapter_dir, out, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, PackError) as e:
        _fail(str(e))
    click.echo(f"wrote {path}; check it with: fastnemo verify {path} --model MODEL_DIR")


@main.command()
@click.argument("zip_path", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              help="Model folder of the target architecture: weights are checked key for key and shape for shape.")
@click.option("--base-model", default=ModelConfig.base_model_name, show_default=True,
              help="Expected base_model_name_or_path ('' to skip).")
@click.option("--load", is_flag=True, help="Also load the adapter onto the model for real and run it (small models).")
def verify(zip_path, model_path, base_model, load):
    """Re-open a submission zip and check it as the competition would load it. Exit 1 with the reason on failure."""
    from fastnemo.pack import VerifyError
    from fastnemo.pack import verify as verify_fn

    try:
        report = verify_fn(zip_path, model_path, base_model or None, load=load)
    except VerifyError as e:
        click.secho(f"verify failed: {e}", fg="red", err=True)
        sys.exit(1)
    click.secho(f"ok: {zip_path}", fg="green")
    click.echo(json.dumps(report, indent=2))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def best(run_dir):
    """Name the best checkpoint of RUN_DIR by validation score, with the leaderboard."""
    from fastnemo import ledger
    from fastnemo.progress import console
    from fastnemo.run import RunDir

    run = RunDir(run_dir)
    top = ledger.best(run)
    if top is None:
        _fail(f"{run_dir}: no evaluated checkpoint yet")
    console.print(ledger.table(run))
    click.echo(json.dumps({**top, "adapter": str(run.artifact(top["checkpoint"], "adapter"))}))


def _mount() -> None:
    """Commands that live beside the module they drive."""
    from fastnemo.distill import distill_command
    from fastnemo.grpo import grpo_command
    from fastnemo.plan import plan_command
    from fastnemo.score import score_command
    from puzzles.cli import data

    for command in (data, distill_command, grpo_command, plan_command, score_command):
        main.add_command(command)


_mount()
