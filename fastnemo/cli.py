"""The ``fastnemo`` command line. Each command is a thin layer over one module; ``recipe`` runs them all.

The options of the stage commands (``sft``, ``eval``, ``distill``, ``grpo``) are the recipe's own keys: each
takes ``--model/--adapter/--data/--out`` and ``KEY=VALUE`` overrides, checked by the config dataclasses
(``fastnemo.config``) exactly like a key in a recipe file, before any model loads. Nothing here imports
torch at import time: the commands import their modules when they run, so ``fastnemo --help`` is instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from fastnemo import config
from fastnemo.config import ModelConfig, Recipe, RecipeError

# Quiet transformers' kernel-fallback warnings and tqdm bars: rich bars and tables carry progress instead.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars follow it
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _fail(msg: str):
    raise click.ClickException(msg)


# Commands defined beside the module they drive, imported only when they are asked for.
LAZY_COMMANDS = {"data": "puzzles.cli:data", "plan": "fastnemo.plan:plan_command",
                 "score": "fastnemo.score:score_command", "doctor": "fastnemo.doctor:doctor_command"}


class LazyGroup(click.Group):
    """A click group whose ``LAZY_COMMANDS`` are imported on first use (their modules import no torch)."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS and name not in self.commands:
            import importlib

            module, attr = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        """An environment error (disk full, permissions, a vanished file) is a message, not a traceback: the
        atomic writers have already left every final path as it was (puzzles.files)."""
        from puzzles.files import InputError, is_disk_full

        try:
            return super().invoke(ctx)
        except InputError as e:  # a bad file, row or key, named in the message
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if not e.errno:
                raise
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
        except Exception as e:  # a library's own error type carrying ENOSPC (safetensors, tokenizers)
            if not is_disk_full(e):
                raise
            raise click.ClickException(f"disk full ({type(e).__name__}: {e}); free some space and rerun") from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fastnemo")
def main():
    """fastnemo: a LoRA for Nemotron-3-Nano that solves the Wonderland puzzles, on one H100.

    \b
    Start here:
      fastnemo recipe recipes/smoke.toml      tiny model, CPU, minutes: data -> SFT -> eval -> zip
      fastnemo recipe --check recipes/round1.toml   validate a recipe, print its plan and memory plan
      fastnemo recipe recipes/smoke.toml sft.max_steps=3 lora.rank=16   the same, with keys overridden
    """


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--check", is_flag=True, help="Validate the recipe and print the resolved plan; run nothing.")
@click.option("--redo", multiple=True, metavar="STAGE",
              help="Redo this stage (a key like r1-sft, or a stage name: its first key) and every stage that "
                   "depends on it; their earlier files are moved to the run's redone-*/ folder. Repeatable.")
def recipe(recipe_file, overrides, check, redo):
    """Run (or resume) every stage of RECIPE_FILE in its run directory.

    KEY=VALUE pairs override the file's keys (e.g. sft.max_steps=5 lora.rank=16); each value is read as
    TOML and checked exactly like the key in the file. Re-running the same command skips finished stages
    and resumes an interrupted one; a finished stage whose recipe keys changed is refused before anything
    runs (--redo redoes it). The run directory gets the resolved config, manifest.json,
    metrics.jsonl, plots and, at the end, submission.zip. `fastnemo recipe-keys` lists every key.
    """
    from fastnemo.config import load_recipe

    try:
        r = load_recipe(recipe_file, overrides)
    except RecipeError as e:
        _fail(str(e))
    if not check:
        _import_backend_first(r)
    from fastnemo.progress import console
    from fastnemo.recipe import plan_keys, preflight, run_recipe
    if check:
        console.print(f"[bold]{r.name}[/]: run directory {r.paths.run_dir}")
        if overrides:  # the run directory's config.json records the recipe with them applied
            console.print(f"  overrides: {' '.join(overrides)}")
        done = _finished_stages(r.paths.run_dir)
        for rnd, stage, key in plan_keys(r):
            console.print(f"  round {rnd}  {stage:8s} -> {key}" + ("  (done: skipped on a run)" if key in done else ""))
        from fastnemo.plan import plan_recipe, plan_table, rates_line, time_table

        console.print(plan_table(plan_recipe(r)))
        console.print(time_table(r))
        console.print(f"  {rates_line()}", soft_wrap=True)
        if r.model.tiny:
            console.print("  (both plans are for the full model on one H100 80 GB; this recipe's tiny model "
                          "runs in minutes on a CPU)")
        try:
            for note in preflight(r):
                console.print(f"  {note}")
        except RecipeError as e:
            _fail(str(e))
        console.print("[green]recipe ok")
        return
    from fastnemo.run import RunLocked

    try:
        run = run_recipe(r, redo=redo)
    except (RunLocked, RecipeError, RuntimeError, FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        _fail(f"{type(e).__name__}: {e}" if isinstance(e, OSError) and e.errno else str(e))
    sub = run.path / "pack" / "submission.zip"
    if sub.exists():
        console.print(f"[bold green]submission:[/] {sub}")


def _finished_stages(run_dir: Path) -> dict:
    """The finished stages in an existing run directory's manifest (none when it has none yet)."""
    try:
        return json.loads((run_dir / "manifest.json").read_text())["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


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


# ------------------------------------------------------------------------------------------ stage commands


def _import_backend_first(r: Recipe) -> None:
    """Unsloth patches transformers and TRL on import: it must come first (fastnemo.unsloth_backend)."""
    if r.model.backend == "unsloth":
        from fastnemo.unsloth_backend import import_first

        import_first(vllm_engine=r.generation.engine == "vllm")


def qualify(section: str, item: str) -> str:
    """A stage command's override with its section added when it names one of the section's own keys:
    ``max_steps=3`` for ``sft`` is ``sft.max_steps=3``, ``sampling.max_tokens=48`` for ``eval`` is
    ``eval.sampling.max_tokens=48``; ``lora.rank=8`` or ``seed=1`` stay as they are (recipe keys)."""
    name = item.partition("=")[0].strip()
    head, _, rest = name.partition(".")
    cls = config._hints(Recipe)[section]
    fields = {f.name: config._hints(cls)[f.name] for f in dataclasses.fields(cls)}
    if head in fields and (not rest or dataclasses.is_dataclass(fields[head])):
        return f"{section}.{item.strip()}"
    return item


def stage_recipe(section: str, model_path: str, overrides, **table) -> Recipe:
    """The Recipe a stage command runs with: defaults, ``model.path`` and ``table`` set, then the overrides.
    A bad key or value is a usage error naming the key, before any model loads."""
    base = {"model": {"path": model_path}}
    for name, value in table.items():
        base.setdefault(section, {})[name] = value
    try:
        items = [qualify(section, o) for o in overrides]
        return config.build_recipe(config.apply_overrides(base, items), "command line")
    except RecipeError as e:
        raise click.UsageError(str(e)) from None


def _lock_out(out) -> None:
    """Take --out's lock (fastnemo.run.RunDir) for the whole command: a second process on the same folder is
    refused instead of training into the same checkpoints."""
    from fastnemo.run import RunDir, RunLocked

    try:
        run = RunDir(out).lock()
    except RunLocked as e:
        _fail(str(e))
    click.get_current_context().call_on_close(run.unlock)  # or when the process exits, however it exits


def _load_session(r: Recipe, adapter: str | None):
    _import_backend_first(r)
    from fastnemo.session import ModelSession

    return ModelSession.load(r.model.path, r.model, r.lora, r.generation, adapter=adapter, seed=r.seed)


def _keys_help(section: str) -> str:
    """The section's keys, defaults and help, for the command's --help (from the config, never restated)."""
    lines = ["\b\nKEY=VALUE overrides: any recipe key (fastnemo recipe-keys lists them all), e.g. lora.rank=8",
             f"model.backend=unsloth generation.engine=vllm seed=1; [{section}] keys may drop the '{section}.':"]
    for name, f, hint in config.iter_keys(config._hints(Recipe)[section], f"{section}."):
        kind = config.type_text(hint).replace("\\", "")
        lines.append(f"  {name} = {json.dumps(config.default_of(f))}  ({kind}) {f.metadata['help']}")
    return "\n".join(lines)


def stage_command(name: str, section: str, data_help: str, out_help: str, data_required: bool = True):
    """A stage command: --model/--adapter/--data/--out plus KEY=VALUE overrides of the recipe's keys."""

    def wrap(f):
        doc = (f.__doc__ or "").strip()
        f = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")(f)
        f = click.option("--out", required=True, type=click.Path(file_okay=False), help=out_help)(f)
        f = click.option("--data", required=data_required, type=click.Path(exists=True, dir_okay=False),
                         help=data_help)(f)
        f = click.option("--adapter", type=click.Path(exists=True, file_okay=False),
                         help="Start from this LoRA adapter folder instead of a fresh LoRA.")(f)
        f = click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False),
                         help="Base model folder (config.json, weights, tokenizer): model.path.")(f)
        return main.command(name, help=f"{doc}\n\n{_keys_help(section)}")(f)

    return wrap


@stage_command("sft", "sft", "SFT rows (JSONL with prompt and completion, as `fastnemo data build` writes).",
               "Output folder (adapter/, checkpoints/).")
def sft(model_path, adapter, data, out, overrides):
    """Supervised fine-tuning of a LoRA on DATA; writes OUT/adapter. Resumes from OUT/checkpoints."""
    r = stage_recipe("sft", model_path, overrides)
    if (Path(out) / "adapter").exists():  # before loading the model, not after training
        _fail(f"{Path(out) / 'adapter'} exists; refusing to overwrite it (choose another --out)")
    _lock_out(out)
    from fastnemo import sft as sft_mod
    from puzzles.files import JsonlError, read_jsonl

    try:
        rows = read_jsonl(data, strict=True)
    except JsonlError as e:
        _fail(str(e))
    session = _load_session(r, adapter)
    summary = sft_mod.train(session, rows, r.sft, Path(out) / "checkpoints", seed=r.seed)
    try:
        session.save_adapter(Path(out) / "adapter")
    except FileExistsError as e:
        _fail(str(e))
    click.echo(json.dumps(summary))


@stage_command("eval", "eval", "Validation CSV with id,prompt,answer (the competition's train.csv).",
               "Folder for results.jsonl and summary.json.")
def eval_cmd(model_path, adapter, data, out, overrides):
    """Score a model (+ adapter) on DATA with the competition's metric: greedy, boxed answer, 1e-2 tolerance."""
    r = stage_recipe("eval", model_path, overrides, data=str(data))
    from fastnemo.evaluate import evaluate, stratified
    from puzzles.dataset import load_csv
    from puzzles.files import write_json

    try:
        puzzles = stratified(load_csv(data, require_answer=True), r.eval.limit)
    except ValueError as e:
        _fail(str(e))
    _lock_out(out)
    session = _load_session(r, adapter)
    summary = evaluate(session, puzzles, r.eval.sampling, Path(out) / "results.jsonl",
                       batch_size=r.generation.batch_size)
    write_json(Path(out) / "summary.json", summary)


@stage_command("distill", "distill", "Distill on these puzzles (CSV id,prompt,answer or JSONL) instead of new "
               "generated ones; distill.prompts caps them.", "Output folder (traces.jsonl, passrates.jsonl, "
               "goldilocks.jsonl, passrates.png). Re-running the same command resumes.", data_required=False)
def distill(model_path, adapter, data, out, overrides):
    """Sample K answers per puzzle, keep the verified ones as SFT traces, and pick the Goldilocks prompts."""
    r = stage_recipe("distill", model_path, overrides, **({"data": str(Path(data).resolve())} if data else {}))
    from fastnemo import distill as distill_mod

    _lock_out(out)
    session = _load_session(r, adapter)
    summary = distill_mod.run(session, r, Path(out), seed=r.seed)
    click.echo(json.dumps(summary))


@stage_command("grpo", "grpo", "Training prompts (goldilocks.jsonl from distill, or a CSV id,prompt,answer); "
               "default: new generated puzzles.", "Output folder (adapter/, checkpoints/, metrics.jsonl). "
               "Re-running resumes.", data_required=False)
def grpo(model_path, adapter, data, out, overrides):
    """DAPO (GRPO with DAPO's settings and dynamic sampling) on a LoRA; writes OUT/adapter."""
    r = stage_recipe("grpo", model_path, overrides)
    out = Path(out)
    if (out / "adapter").exists():  # before loading the model, not after training
        _fail(f"{out / 'adapter'} exists; refusing to overwrite it (choose another --out)")
    from fastnemo import grpo as grpo_mod
    from puzzles.files import append_jsonl

    _lock_out(out)
    session = _load_session(r, adapter)
    summary = grpo_mod.train(session, r, out, prompts_path=Path(data) if data else None, seed=r.seed,
                             log=lambda rec: append_jsonl(out / "metrics.jsonl", [rec]))
    try:
        session.save_adapter(out / "adapter")
    except FileExistsError as e:
        _fail(str(e))
    click.echo(json.dumps(summary))


@main.command("recipe-keys")
@click.option("--update", "readme", type=click.Path(exists=True, dir_okay=False),
              help="Rewrite the table between the recipe-keys markers of this file (the README) instead.")
def recipe_keys(readme):
    """Every recipe key with its type, default and meaning, as a Markdown table (from fastnemo.config)."""
    table = config.recipe_table()
    if readme is None:
        click.echo(table, nl=False)
        return
    from puzzles.files import write_atomic

    text = Path(readme).read_text()
    try:
        updated = replace_between_markers(text, table)
    except ValueError as e:
        _fail(f"{readme}: {e}")
    if updated != text:
        write_atomic(readme, updated)
    click.echo(f"{readme}: recipe table {'updated' if updated != text else 'already current'}")


KEYS_BEGIN, KEYS_END = "<!-- recipe-keys: begin (generated by `fastnemo recipe-keys`) -->", "<!-- recipe-keys: end -->"


def replace_between_markers(text: str, table: str) -> str:
    if KEYS_BEGIN not in text or KEYS_END not in text:
        raise ValueError(f"no {KEYS_BEGIN} ... {KEYS_END} markers")
    head, rest = text.split(KEYS_BEGIN, 1)
    _, tail = rest.split(KEYS_END, 1)
    return f"{head}{KEYS_BEGIN}\n{table}{KEYS_END}{tail}"


# ------------------------------------------------------------------------------------------ artifacts


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


@main.group()
def traces():
    """Measure SFT traces under a model (teacher forcing)."""


@traces.command("score")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False),
              help="Base model folder (config.json, weights, tokenizer): model.path.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="Score under this LoRA adapter.")
@click.argument("sft", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for trace_scores.json (summary) and trace_scores.jsonl (per row).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=0, show_default=True, help="Only the first N rows (0: all).")
def traces_score(model_path, adapter, sft, overrides, out_dir, batch_size, limit):
    """Teacher-forced log-probs of each trace in SFT (JSONL) under --model [+ --adapter]: per category the
    mean/min token log-prob, share of tokens under ln 2, first greedy divergence, and the weakest lines.
    KEY=VALUE: recipe keys, e.g. model.backend=unsloth."""
    r = stage_recipe("model", model_path, overrides)
    from fastnemo import trace_score
    from puzzles.audit import AuditError, read_rows

    try:
        rows = read_rows(sft)
    except AuditError as e:
        _fail(str(e))
    rows = rows[:limit] if limit else rows
    try:
        session = _load_session(r, adapter)
    except Exception as e:  # noqa: BLE001 -- any loader failure: name the folder, not a traceback
        _fail(f"cannot load model {model_path}" + (f" with adapter {adapter}" if adapter else "") + f": {e}")
    records = trace_score.score_rows(session, rows, batch_size=batch_size, progress=True)
    summary = trace_score.summarize(records)
    trace_score.print_table(summary, f"teacher-forced trace scores: {sft} under {model_path}")
    if out_dir:
        trace_score.write(out_dir, summary, records)
        click.echo(f"wrote {out_dir}/trace_scores.json and trace_scores.jsonl", err=True)


if __name__ == "__main__":
    main()
