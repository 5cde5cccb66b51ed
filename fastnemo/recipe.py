"""Run a recipe: its stages, in order, for each round, on one model session, in one run directory.

Each stage is a function ``(ctx, key) -> (artifacts, summary)`` below. A stage whose manifest entry exists
is skipped, so re-running a recipe resumes it; the model is loaded (once) only when a stage needs it, with
the newest finished adapter, so a resumed run continues from where training stopped.

Stage keys name the round and the stage: ``r1-recall``, ``r1-data``, ``r1-sft``, ``r1-eval-sft``, ``r1-distill``,
``r1-grpo``, ``r1-eval-grpo``, and finally ``pack``. Every evaluation records the adapter it scored in
the manifest; ``pack`` ships the best-scoring one (``fastnemo.ledger``).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from fastnemo import distributed, ledger, provenance
from fastnemo.config import Recipe, RecipeError, to_dict
from fastnemo.progress import console
from fastnemo.run import RunDir, RunLocked
from fastnemo.seeds import derive_seed
from puzzles import Puzzle

TRAINING_STAGES = ("recall", "sft", "grpo", "start")  # stages that leave an adapter (start: the start_from one)


@dataclasses.dataclass
class Context:
    recipe: Recipe
    run: RunDir
    session: object = None
    adapter_key: str | None = None  # the stage whose adapter the session's LoRA currently holds
    round: int = 1

    def finished(self, stage: str) -> str | None:
        """The key of the newest finished ``stage`` (e.g. "data", "distill") of this run, by round."""
        keys = [k for _, st, k in plan_keys(self.recipe) if st == stage and k in self.run.manifest()["stages"]]
        return keys[-1] if keys else None

    def start_run(self) -> RunDir | None:
        """The run directory named by ``start_from``, if it names one (not a bare adapter folder)."""
        path = self.recipe.paths.start_from
        if path is not None and (path / "manifest.json").exists():
            return RunDir(path)
        return None

    def start_adapter(self) -> Path | None:
        """The adapter ``start_from`` points to: a run's best checkpoint, or an adapter folder itself."""
        path = self.recipe.paths.start_from
        if path is None:
            return None
        prior = self.start_run()
        if prior is not None:
            top = ledger.best(prior)
            key = top["checkpoint"] if top else prior_training_key(prior)
            if key is None:
                raise FileNotFoundError(f"start_from {path}: that run has no trained adapter yet")
            return prior.artifact(key, "adapter")
        if (path / "adapter_config.json").exists():
            return path
        raise FileNotFoundError(f"start_from {path}: neither a run directory (manifest.json) nor an adapter folder")

    def model_path(self) -> Path:
        return self.recipe.paths.model

    def current_adapter(self) -> Path | None:
        """The adapter the session holds (or would load): the newest finished training stage's, else
        ``start_from``'s, else None (the base model with a fresh LoRA)."""
        return self.run.artifact(self.adapter_key, "adapter") if self.adapter_key else self.start_adapter()

    def release_session(self) -> None:
        """Hand the training model's memory back (before the harness child starts vLLM). Every training stage
        has saved its adapter before it finished, so nothing is lost: ``get_session`` reloads lazily from the
        newest one. Its engine is shut down first where it has one (a resident vLLM)."""
        if self.session is None:
            return
        import gc
        import sys

        import torch

        from fastnemo.session import free_cuda_cache, free_weights

        engines = [getattr(self.session.started_engine, "llm", None), getattr(self.session.model, "vllm_engine", None)]
        for llm in {id(e): e for e in engines if e is not None}.values():  # a resident vLLM (Unsloth's included)
            from fastnemo.engines.vllm import shutdown

            shutdown(llm)
        model, self.session = self.session.model, None
        free_weights(model)
        del model
        if self.recipe.lora.optimizer_8bit and "bitsandbytes" in sys.modules:  # its registry holds the embeddings
            try:
                from fastnemo.patches.bitsandbytes import forget_module_overrides
            except ImportError as e:  # another bitsandbytes: its registry keeps the (now empty) modules
                console.print(f"[yellow]{e}")
            else:
                forget_module_overrides()
        gc.collect()
        if torch.cuda.is_available():
            free_cuda_cache()
            left = torch.cuda.memory_reserved() / 2**30
            if left > 1:  # the next process (vLLM) asks for a share of the whole card
                console.print(f"[yellow]released the training model, but this process still holds {left:.1f} GiB "
                              "of GPU memory")

    def get_session(self):
        """The run's one model session, loaded on first use with the newest finished adapter."""
        if self.session is None:
            from fastnemo.session import ModelSession

            path = self.model_path()

            def build_tiny():
                if self.recipe.model.tiny and not (path / "config.json").exists():
                    from fastnemo.tiny import build_tiny_model

                    console.print(f"building tiny nemotron_h model at {path}")
                    build_tiny_model(path, seed=self.recipe.seed)

            distributed.on_main(build_tiny)  # one process builds it, the others wait
            adapter = self.current_adapter()
            self.session = ModelSession.load(
                path, self.recipe.model, self.recipe.lora, self.recipe.generation, adapter=adapter,
                seed=self.recipe.seed,
            )
        return self.session


def plan_keys(recipe: Recipe) -> list[tuple[int, str, str]]:
    """(round, stage, key) for every stage the recipe runs, in order. With ``start_from`` the run first
    takes in the starting adapter (``start``) and, when it evaluates at all, scores it (``r0-eval-start``):
    it competes for the submission like any checkpoint of this run."""
    out = []
    if recipe.start_from:
        out.append((1, "start", "start"))
        if "eval" in recipe.stages:
            out.append((1, "eval", "r0-eval-start"))
    for r in range(1, recipe.rounds + 1):
        last_training = "base"
        for stage in recipe.stages:
            if stage == "pack" or (stage == "recall" and r > 1):  # the drills are stage 1: the first round's
                continue
            if stage == "eval" and r == 1 and last_training == "base" and recipe.start_from:
                continue  # the start adapter is scored once, as r0-eval-start
            if stage == "eval":
                key = f"r{r}-eval-{last_training}"
            else:
                key = f"r{r}-{stage}"
            if stage in TRAINING_STAGES:
                last_training = stage
            out.append((r, stage, key))
    if "pack" in recipe.stages:
        out.append((recipe.rounds, "pack", "pack"))
    return out


def prior_training_key(run: RunDir) -> str | None:
    keys = [k for k in run.manifest()["stages"] if k.rsplit("-", 1)[-1] in TRAINING_STAGES]
    return keys[-1] if keys else None


# ---------------------------------------------------------------------------------------------- stages


def stage_data(ctx: Context, key: str):
    """SFT rows. When a distill stage has finished (this round or earlier), its verified traces mixed with
    part of the previous SFT data (this run's, else the start_from run's); otherwise the recipe's data file
    or a fresh solver-trace mix."""
    recipe, d = ctx.recipe, ctx.run.path / key
    d.mkdir(exist_ok=True)  # not cleaned: the mix builder's shards inside it make a killed build resume
    out = d / "sft.jsonl"
    distilled = ctx.finished("distill")
    previous = ctx.finished("data")
    prior = ctx.start_run()
    prev_sft = ctx.run.artifact(previous, "sft") if previous else None
    if prev_sft is None and prior is not None and prior.manifest()["stages"]:
        prior_data = [k for k in prior.manifest()["stages"] if k.endswith("-data")]
        prev_sft = prior.artifact(prior_data[-1], "sft") if prior_data else None
    if distilled:
        from fastnemo.distill import mix_next

        stats = mix_next(ctx.run.artifact(distilled, "traces"), prev_sft, out,
                         carry_share=recipe.distill.carry_share,
                         seed=derive_seed(recipe.seed, "mix_next", ctx.round))
    elif recipe.data.path:
        from puzzles.files import read_jsonl, write_atomic

        source = recipe.paths.data
        records = read_jsonl(source, strict=True)
        if not records:  # blank lines are no rows: SFT would fail after loading the model
            raise ValueError(f"data.path {source}: empty (no JSONL rows, only blank lines): nothing to train on")
        for i, row in enumerate(records, start=1):  # what SFT reads: fail now, not after loading
            bad = [k for k in ("prompt", "completion") if not isinstance(row.get(k), str) or not row[k].strip()]
            if bad:
                raise ValueError(f"data.path {source}: line {i}: missing or empty {bad} (SFT needs both)")
        write_atomic(out, source.read_bytes())
        stats = {"source": recipe.data.path}
    else:
        from puzzles.mix import MixConfig, build_mix

        like = str(recipe.paths.like) if recipe.paths.like else None
        stats = build_mix(
            MixConfig(n=recipe.data.n, out=str(out), like=like, floor=recipe.data.floor,
                      seed=derive_seed(recipe.seed, "mix", ctx.round), workers=recipe.data.workers,
                      keep_guessed=tuple(recipe.data.keep_guessed), progress=True,
                      shares=dict(recipe.data.shares), drill_share=recipe.data.drill_share)
        )
    with open(out) as f:
        rows = sum(1 for line in f if line.strip())  # as read_jsonl counts them: blank lines are no rows
    if rows == 0:
        raise ValueError(f"{key}: the SFT data is empty after filtering ({out}); nothing to train on")
    return {"sft": out}, {"rows": rows, **{k: v for k, v in stats.items() if k in ("source", "kept", "seconds")}}


def stage_recall(ctx: Context, key: str):
    """The drills alone (``fastnemo.recall``): packed rows of the drilled entries, trained by ``sft.train``
    with the recall stage's learning rate, one pass over rows that hold every entry ``exposures`` times."""
    from fastnemo import recall, sft
    from puzzles.files import write_jsonl
    from puzzles.recall import entries

    r, d = ctx.recipe.recall, ctx.run.path / key  # not cleaned: the trainer's checkpoints for a resume
    d.mkdir(exist_ok=True)
    session = ctx.get_session()
    drilled = entries(r.coverage, r.limit)
    try:
        rows = recall.pack_rows(session, drilled, r.exposures, r.requests_per_row, ctx.recipe.sft.max_length,
                                seed=derive_seed(ctx.recipe.seed, "recall", ctx.round))
    except ValueError as e:
        raise RecipeError(f"{key}: {e}") from None
    if distributed.is_main():  # N data-parallel ranks pack the same rows: one writes them
        write_jsonl(d / "rows.jsonl", [{k: v for k, v in row.items() if k != "labels"} for row in rows])
    cfg = dataclasses.replace(ctx.recipe.sft, learning_rate=r.learning_rate, epochs=1.0, max_steps=-1)
    summary = sft.train(session, rows, cfg, d / "checkpoints", seed=ctx.recipe.seed,
                        log=lambda rec: ctx.run.log({"stage": key, **rec}))
    adapter = save_adapter(session, d)
    ctx.adapter_key = key
    kinds = {k: sum(e.kind == k for e in drilled) for k in ("cipher", "cryptarithm")}
    return {"adapter": adapter, "rows": d / "rows.jsonl"}, {
        **summary, "entries": kinds, "exposures": r.exposures, "requests": sum(len(x["requests"]) for x in rows),
        "tokens": sum(x["tokens"] for x in rows), "coverage": r.coverage}


def stage_sft(ctx: Context, key: str):
    from fastnemo import sft
    from puzzles.files import read_jsonl

    d = ctx.run.path / key  # not cleaned: it holds the trainer's checkpoints for a resume
    d.mkdir(exist_ok=True)
    data_key = ctx.finished("data")
    if data_key is None:
        raise ValueError(f"{key}: no data stage has finished before it (put 'data' before 'sft' in stages)")
    rows = read_jsonl(ctx.run.artifact(data_key, "sft"), strict=True)
    session = ctx.get_session()
    summary = sft.train(session, rows, ctx.recipe.sft, d / "checkpoints", seed=ctx.recipe.seed,
                        log=lambda rec: ctx.run.log({"stage": key, **rec}), report_to=ctx.recipe.report.to,
                        on_resume=lambda step: ctx.run.forget_metrics(key, after_step=step))
    adapter = save_adapter(session, d)
    ctx.adapter_key = key
    return {"adapter": adapter}, summary


def save_adapter(session, stage_dir: Path) -> Path:
    """Save the stage's adapter. One left by a try that died before its manifest entry is no finished
    artifact: it is replaced (the trainer has just resumed to the same weights)."""
    import shutil

    target = stage_dir / "adapter"
    if distributed.is_main():  # N data-parallel ranks hold the same LoRA: one writes it
        if target.exists():
            shutil.rmtree(target)
        session.save_adapter(target)
    distributed.barrier()
    return target


def stage_start(ctx: Context, key: str):
    """A copy of the start_from adapter in this run: its own artifact, so the ledger can ship it."""
    import shutil

    d = ctx.run.stage_dir(key)
    shutil.copytree(ctx.start_adapter(), d / "adapter")
    ctx.adapter_key = key
    return {"adapter": d / "adapter"}, {"from": str(ctx.recipe.paths.start_from)}


def validation_set(ctx: Context) -> list[Puzzle]:
    """The user's train.csv when the recipe names one, else a held-out generated set (fixed seed, kept
    apart from the training seeds)."""
    recipe = ctx.recipe
    if recipe.eval.data:
        from fastnemo.evaluate import stratified
        from puzzles.dataset import load_csv

        # a fixed subset (seed 0, not the recipe's): every run and round is scored on the same puzzles
        return stratified(load_csv(recipe.paths.eval_data, require_answer=True), recipe.eval.limit)
    from puzzles import categories

    rng = random.Random(derive_seed(recipe.seed, "heldout"))
    out = []
    for i in range(recipe.eval.n_generated):
        p = categories.generate(categories.CATEGORIES[i % len(categories.CATEGORIES)], rng)
        p.id = f"heldout-{i:05d}"
        out.append(p)
    return out


def stage_eval(ctx: Context, key: str):
    from fastnemo import harness
    from fastnemo.evaluate import evaluate

    d = ctx.run.path / key  # results.partial.jsonl inside lets an interrupted evaluation resume
    d.mkdir(exist_ok=True)
    runner, why = harness.choose(ctx.recipe, "eval", distributed.world())
    console.print(f"{key}: evaluating through the {runner} ({why})")
    recall_outputs = None
    if runner == "harness":  # the trainer's memory goes back first; the next training stage reloads it
        ctx.release_session()
        reqs = recall_requests(ctx) if ctx.recipe.recall.eval_samples else []
        summary = harness.evaluate(ctx.recipe, validation_set(ctx), d / "results.jsonl", ctx.model_path(),
                                   ctx.current_adapter(), extra=reqs or None)
        if reqs:  # recall rode along in the same engine start (harness "chat" requests)
            from puzzles.files import read_jsonl

            said = {r["id"]: r["output"] for r in read_jsonl(summary.pop("chat")["path"])}
            recall_outputs = (reqs, [said[r["id"]] for r in reqs])
    else:  # over every process of the run, each its shard (fastnemo.evaluate)
        session = ctx.get_session()
        summary = evaluate(session, validation_set(ctx), ctx.recipe.eval.sampling, d / "results.jsonl",
                           batch_size=ctx.recipe.generation.batch_size)
    summary.update(checkpoint=ctx.adapter_key, runner=runner, runner_why=why)
    ctx.run.forget_metrics(key)  # a try killed after logging, before its manifest entry, logged these
    ctx.run.log({"stage": key, "eval_accuracy": summary["accuracy"], "checkpoint": ctx.adapter_key,
                 **{f"acc/{c}": v["accuracy"] for c, v in summary["per_category"].items()}})
    artifacts = {"results": d / "results.jsonl"}
    if ctx.recipe.recall.eval_samples:
        summary["recall"] = distributed.on_main(measure_recall, ctx, d, recall_outputs)
        if summary["recall"]["n"]:
            from puzzles.recall import metrics

            ctx.run.log({"stage": key, "checkpoint": ctx.adapter_key, **metrics(summary["recall"])})
            artifacts["recall"] = d / "recall.jsonl"
    if ctx.recipe.eval.trace_set:
        scores = distributed.on_main(score_trace_set, ctx, ctx.get_session(), d)  # one forward pass a batch: rank 0
        ctx.run.log({"stage": key, "checkpoint": ctx.adapter_key, **trace_metrics(scores)})
        summary["traces"] = {c: {k: v for k, v in e.items() if k != "weakest_lines"} for c, e in scores.items()}
        artifacts["trace_scores"] = d / "trace_scores.json"
    return artifacts, summary


def recall_requests(ctx: Context) -> list[dict]:
    """The eval's fixed recall sample (``fastnemo.recall.requests``), counted by the model's tokenizer."""
    from transformers import AutoTokenizer

    from fastnemo import recall
    from puzzles.recall import entries

    r = ctx.recipe.recall
    tok = AutoTokenizer.from_pretrained(ctx.model_path())
    return recall.requests(tok, entries(r.coverage, r.limit), r.eval_samples, ctx.recipe.eval.sampling.max_tokens)


def measure_recall(ctx: Context, d: Path, answered: tuple[list, list] | None = None) -> dict:
    """Exact greedy recall of a fixed sample of the recipe's drilled entries, written to ``d``/recall.json(l):
    ``answered`` (requests, outputs) by the harness, else generated now on the session's engine."""
    from fastnemo import recall
    from puzzles.recall import entries

    r, sampling = ctx.recipe.recall, ctx.recipe.eval.sampling
    if answered is not None:
        summary, records = recall.score(*answered, sampling.max_tokens)
    else:
        summary, records = recall.measure(ctx.get_session(), entries(r.coverage, r.limit), r.eval_samples,
                                          sampling, ctx.recipe.generation.batch_size)
    if summary["n"]:
        recall.write(d, summary, records)
        by = " · ".join(f"{k} {v:.0%}" for k, v in summary["by_kind"].items())
        console.print(f"recall ({ctx.adapter_key or 'base'}): {summary['exact']:.1%} exact of {summary['n']} "
                      f"entries ({by})")
    else:
        console.print(f"[yellow]recall not measured: {summary['skipped']}")
    return summary


def score_trace_set(ctx: Context, session, d: Path) -> dict:
    """Teacher-forced scores of ``eval.trace_set`` under the session's model (``fastnemo.trace_score``),
    written to ``d``/trace_scores.json(l)."""
    from fastnemo import trace_score
    from fastnemo.evaluate import stratified
    from puzzles.audit import read_rows

    e = ctx.recipe.eval
    rows = stratified(read_rows(ctx.recipe.paths.trace_set), e.trace_limit)
    records = trace_score.score_rows(session, rows, batch_size=e.trace_batch_size, progress=True)
    summary = trace_score.summarize(records)
    trace_score.print_table(summary, f"teacher-forced trace scores: {e.trace_set} ({ctx.adapter_key or 'base'})")
    trace_score.write(d, summary, records)
    return summary


def trace_metrics(scores: dict) -> dict:
    """The per-category trace scores as flat metrics keys (``trace/<category>/<measure>``)."""
    keys = ("mean_logp", "min_logp", "share_below_ln2", "first_divergence_median", "greedy_match_rows", "rows")
    return {f"trace/{c}/{k}": e[k] for c, e in scores.items() for k in keys}


def stage_distill(ctx: Context, key: str):
    from fastnemo import distill, harness

    d = ctx.run.path / key
    d.mkdir(exist_ok=True)
    seed = derive_seed(ctx.recipe.seed, "distill", ctx.round)
    runner, why = harness.choose(ctx.recipe, "distill", distributed.world())
    console.print(f"{key}: sampling through the {runner} ({why})")
    if runner == "harness":  # as the eval stage: free the trainer, sample in a vLLM child, reload lazily
        import time

        ctx.release_session()
        puzzles = distill.load_prompts(ctx.recipe, seed)
        t0 = time.time()
        harness.distill_sample(ctx.recipe, puzzles, d / distill.CACHE, ctx.model_path(), ctx.current_adapter(), seed)
        summary = distill.finish(puzzles, distill.read_cache(d / distill.CACHE), ctx.recipe.distill, d,
                                 seconds=time.time() - t0)
        summary.update(runner=runner, runner_why=why)
        return distill.artifacts(d), summary
    summary = distill.run(ctx.get_session(), ctx.recipe, d, seed=seed,  # over every process of the run
                          log=lambda rec: ctx.run.log({"stage": key, **rec}))
    summary.update(runner=runner, runner_why=why)
    return distill.artifacts(d), summary


def stage_grpo(ctx: Context, key: str):
    from fastnemo import grpo

    d = ctx.run.path / key
    d.mkdir(exist_ok=True)
    distilled = ctx.finished("distill")
    prompts = ctx.run.artifact(distilled, "goldilocks") if distilled else None
    session = ctx.get_session()
    summary = grpo.train(session, ctx.recipe, d, prompts_path=prompts,
                         seed=derive_seed(ctx.recipe.seed, "grpo", ctx.round),
                         log=lambda rec: ctx.run.log({"stage": key, **rec}),
                         on_resume=lambda step: ctx.run.forget_metrics(key, after_step=step))
    adapter = save_adapter(session, d)
    ctx.adapter_key = key
    return {"adapter": adapter}, summary


def stage_pack(ctx: Context, key: str):
    from fastnemo.pack import copy_packed, pack, reusable, verify

    best = ledger.best(ctx.run)
    source = best["checkpoint"] if best else ctx.adapter_key
    if source is None:
        raise RuntimeError("nothing to pack: the recipe trained no adapter (add an 'sft' stage)")
    d = ctx.run.stage_dir(key)
    adapter = ctx.run.artifact(source, "adapter")
    validated = reusable(adapter, sorted(ctx.run.path.glob("*/harness-submission.zip")))  # the harness served it
    out = copy_packed(validated, d / "submission.zip") if validated else pack(adapter, d / "submission.zip")
    model_path = ctx.model_path()
    small = sum(f.stat().st_size for f in model_path.glob("*.safetensors")) < 2**30
    report = verify(out, model_path, ctx.recipe.model.base_model_name, load=small)
    same = f"; the bytes {validated.parent.name}'s harness validated" if validated else ""
    console.print(f"[green]verified[/] {out} (checkpoint {source}, score {best['accuracy'] if best else 'n/a'}{same})")
    return {"submission": out}, {"checkpoint": source, "verify": report,
                                 "packed_by": f"copied from {validated.relative_to(ctx.run.path)}" if validated
                                 else "fastnemo pack"}


STAGE_FUNCS = {
    "start": stage_start, "recall": stage_recall, "data": stage_data, "sft": stage_sft, "eval": stage_eval,
    "distill": stage_distill, "grpo": stage_grpo, "pack": stage_pack,
}


def preflight(recipe: Recipe) -> list[str]:
    """Check everything a recipe reads before any work starts, so a bad path or a malformed CSV fails in
    seconds, not after hours of training. Raises RecipeError naming the field; returns notes to print."""
    from puzzles.dataset import DatasetError, read_csv

    where, notes = recipe.source or "recipe", []
    if recipe.report.to != "none":
        from fastnemo.requires import MissingPackage
        from fastnemo.tracking import check

        try:
            check(recipe.report.to)
        except MissingPackage as e:
            raise RecipeError(f"{where}: {e}") from None
    model = recipe.paths.model
    if not (model / "config.json").exists():
        if not recipe.model.tiny:
            raise RecipeError(f"{where}: model.path {model} has no config.json (set model.tiny = true to build "
                              "a tiny test model there)")
        notes.append(f"model.path {model}: a tiny model will be built there")
    elif not any(model.glob("*.safetensors")) and not any(model.glob("*.bin")):
        raise RecipeError(f"{where}: model.path {model} has config.json but no weights (*.safetensors)")
    csvs = {"eval.data": recipe.paths.eval_data, "data.like": recipe.paths.like}
    for field, path in csvs.items():
        if path:
            try:
                n = len(read_csv(path, require_answer=field == "eval.data").puzzles)
            except DatasetError as e:
                raise RecipeError(f"{where}: {field}: {e}") from None
            if n == 0:
                raise RecipeError(f"{where}: {field} {path} has no rows")
            notes.append(f"{field}: {n} puzzles")
    if recipe.generation.engine == "vllm" and recipe.model.backend == "hf":
        from fastnemo.plan import CARD_GIB, plan_recipe

        weights = plan_recipe(recipe).weights_gib
        if 2 * weights > CARD_GIB * 0.9:
            raise RecipeError(
                f"{where}: generation.engine = 'vllm' with model.backend = 'hf' loads the {weights:.0f} GiB of "
                "weights twice (trainer + vLLM); use backend = 'unsloth' (vLLM shares its weights) or "
                "engine = 'hf'"
            )
    for stage, runner in (("eval", recipe.eval.runner), ("distill", recipe.distill.runner)):
        if stage not in recipe.stages:
            continue
        from fastnemo import harness

        if runner != "harness":
            chosen, why = harness.choose(recipe, stage, recipe.hardware.gpus)
            notes.append(f"{stage} generates through the {chosen} here ({why})")
            continue

        if not harness.vllm_available():
            raise RecipeError(f"{where}: {stage}.runner = 'harness' needs vllm, which is not installed in this "
                              "Python: pip install vllm==0.26.0 (GPU), or set "
                              f"{stage}.runner = 'auto' (the engine where vllm is missing)")
        if recipe.hardware.gpus > 1:
            raise RecipeError(f"{where}: {stage}.runner = 'harness' runs one vLLM on one GPU; with "
                              f"hardware.gpus = {recipe.hardware.gpus} set {stage}.runner = 'engine' or 'auto'")
    for field, path in {"data.path": recipe.paths.data, "start_from": recipe.paths.start_from}.items():
        if path and not path.exists():
            raise RecipeError(f"{where}: {field} {path} does not exist")
    if recipe.eval.trace_set and "eval" in recipe.stages:
        from puzzles.audit import AuditError, read_rows

        try:
            notes.append(f"eval.trace_set: {len(read_rows(recipe.paths.trace_set))} traces")
        except AuditError as e:
            raise RecipeError(f"{where}: eval.trace_set: {e}") from None
    if "recall" in recipe.stages and recipe.recall.max_hours:
        from fastnemo.plan import recall_plan

        hours = recall_plan(recipe)["hours"]
        if hours > recipe.recall.max_hours:
            raise RecipeError(f"{where}: recall.exposures = {recipe.recall.exposures} takes {hours:.1f} h by "
                              f"`fastnemo plan`, over recall.max_hours = {recipe.recall.max_hours}: lower the "
                              "exposures or recall.coverage")
    if recipe.hardware.gpus > 1:
        notes.append(distributed.check_machine(recipe))
    return notes


def plateaued(run: RunDir, recipe: Recipe, rnd: int) -> bool:
    """True when the best score has not improved over the last ``until_plateau`` rounds."""
    n = recipe.until_plateau
    if not n or rnd <= n:
        return False
    round_of = {k: r for r, _, k in plan_keys(recipe)}  # r0-eval-start counts as round 1: both are <= rnd - n
    best_by_round = {}
    for e in ledger.entries(run):
        r = round_of.get(e["stage"])
        if r is not None:  # a stage of an earlier plan of this run is no round of this one
            best_by_round[r] = max(best_by_round.get(r, 0.0), e["accuracy"])
    before = max((v for r, v in best_by_round.items() if r <= rnd - n), default=0.0)
    recent = max((v for r, v in best_by_round.items() if r > rnd - n), default=0.0)
    return recent <= before


def run_recipe(recipe: Recipe, redo: tuple[str, ...] = ()) -> RunDir:
    """Run (or resume) every stage of ``recipe``; returns its run directory. With ``hardware.gpus`` > 1 this
    process launches the recipe file's N processes and waits for them (``fastnemo.distributed``). ``redo``:
    stages (keys or names) to redo with everything downstream of them (``fastnemo.provenance``)."""
    preflight(recipe)
    if recipe.hardware.gpus > 1 and not distributed.is_worker():
        distributed.launch(recipe, redo)
        return RunDir(recipe.paths.run_dir)
    if recipe.hardware.gpus > 1:
        distributed.init(recipe)
    run = _lock(RunDir(recipe.paths.run_dir))
    try:
        resolved = to_dict(recipe)
        if distributed.is_main():
            console.tee(run.path / "run.log")  # what the console prints, plain, with progress lines
            check_provenance(recipe, run, resolved, redo)
            if recipe.report.to != "none":
                from fastnemo.tracking import Tracker

                run.tracker = Tracker(recipe.report.to, run.path)
            run.write_config(recipe.source, resolved)
        distributed.barrier()
        ctx = Context(recipe=recipe, run=run)
        stopped_after = None
        for rnd, stage, key in plan_keys(recipe):
            if stopped_after is not None and stage != "pack":
                continue
            if stopped_after is None and rnd != ctx.round and plateaued(run, recipe, ctx.round):
                console.print(f"[yellow]no improvement for {recipe.until_plateau} rounds: stopping after round {ctx.round}")
                stopped_after = ctx.round
                continue
            ctx.round = rnd
            if run.done(key):
                console.print(f"[dim]{key}: finished earlier, skipped")
                if stage in TRAINING_STAGES:
                    ctx.adapter_key = key  # the session, when loaded, starts from this adapter
                continue
            console.rule(f"[bold]{key}")
            prov = provenance.provenance(resolved, stage)
            if distributed.is_main():
                start_stage(run, key, prov)
            distributed.barrier()
            if stage in distributed.MAIN_ONLY_STAGES:  # one process writes; the others read the manifest
                distributed.on_main(lambda s=stage, k=key, p=prov: run.finish(k, *STAGE_FUNCS[s](ctx, k), provenance=p))
                if stage in TRAINING_STAGES:
                    ctx.adapter_key = key
                continue
            artifacts, summary = STAGE_FUNCS[stage](ctx, key)
            if distributed.is_main():
                run.finish(key, artifacts, summary, provenance=prov)
            distributed.barrier()
        if distributed.is_main():
            ledger.write_report(run)
    finally:
        console.tee(None)
        if run.tracker is not None:
            run.tracker.close()
        run.unlock()
    if recipe.hardware.gpus > 1:
        distributed.finished()
    return run


def check_provenance(recipe: Recipe, run: RunDir, resolved: dict, redo: tuple[str, ...]) -> None:
    """Before anything runs: move the stages ``redo`` names (and what depends on them) aside, then refuse the
    run if a finished stage ran with other keys than the recipe's now (its artifacts would be misdescribed by
    config.json and built on by stages with the new keys)."""
    plan, manifest = plan_keys(recipe), run.manifest()
    try:
        again = provenance.redo_keys(plan, redo, finished=list(manifest["stages"]))
    except ValueError as e:
        raise RecipeError(str(e)) from None
    changed, unknown = provenance.stale(manifest, resolved)
    changed = {k: v for k, v in changed.items() if k not in again}
    if changed:
        raise RecipeError(provenance.refusal(plan, changed, recipe.source or "RECIPE.toml"))
    if unknown:
        console.print(f"[yellow]{run.manifest_path}: {', '.join(unknown)} finished without a record of their "
                      "recipe keys (an older fastnemo): they are kept as they are, unchecked")
    if again:
        aside = run.move_aside(again)
        if aside:
            console.print(f"[yellow]redoing {', '.join(again)}: their earlier files moved to {aside}")


def start_stage(run: RunDir, key: str, prov: dict) -> None:
    """Record the keys an unfinished stage starts with in its folder; partial work of an earlier try with
    other keys (checkpoints, shards, a NaN learning rate's weights) is moved aside, not resumed from."""
    from puzzles.files import write_json

    record = run.path / key / "provenance.json"
    if record.exists():
        import json

        try:
            before = json.loads(record.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            before = {}
        if before.get("fingerprint") != prov["fingerprint"]:
            aside = run.move_aside([key])
            console.print(f"[yellow]{key}: its unfinished earlier try ran with other keys; starting afresh "
                          f"(that try's files moved to {aside})")
    write_json(record, prov)


def _lock(run: RunDir) -> RunDir:
    """Take the run's lock (rank 0 of a distributed run: the others share its verdict and write no metrics)."""
    if distributed.world() == 1:
        return run.lock()
    error = None
    if distributed.is_main():
        try:
            run.lock()
        except RunLocked as e:
            error = str(e)
    error = distributed.broadcast(error)
    if error:
        raise RunLocked(error)
    if not distributed.is_main():
        run.log = lambda record: None  # metrics.jsonl is rank 0's
        run.forget_metrics = lambda *a, **kw: None
    return run
