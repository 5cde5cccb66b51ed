"""N GPUs of one host: the same recipe, data-parallel, on the engines people already trust.

``[hardware] gpus = N`` (``fastnemo.config.HardwareConfig``). ``run_recipe`` then re-launches the recipe file
as N processes with ``torch.distributed.run`` (what ``accelerate launch`` runs underneath; the user writes no
launch line) and waits for them. Each process holds the base model, the LoRA and one generation engine:

- SFT and DAPO train data-parallel: the TRL trainers run under accelerate's DDP (it reads the launcher's
  environment), the recipe's batch sizes stay global (``fastnemo.config.per_rank`` and ``micro_batches`` split
  them), so 1 and N processes take the same optimizer steps on the same rows.
- Eval and distill shard the prompts round-robin over the processes (``shard``); each process writes and
  resumes its own file (``results.rank{r}.jsonl``, ``generations.rank{r}.jsonl``), rank 0 merges them in the
  prompts' order into the very files one process writes.
- data, start and pack, the run's lock, manifest and metrics.jsonl belong to rank 0; the others wait.

On a machine without CUDA the processes are CPU processes talking over gloo: allowed up to the number of
cores (each needs one), which is how the tests run the real distributed path. With CUDA, ``gpus`` must not
exceed the visible GPUs.

DAPO where colocated rollouts do not fit (``rollout_gpus = k``): the last k GPUs run TRL's vLLM server
(``trl vllm-serve``, data-parallel over them), the first N - k train and ask it for rollouts (TRL's
``vllm_mode = "server"``, weights pushed to it after each step). GPU only: not exercised by the CPU tests.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fastnemo.config import Recipe, RecipeError

WORKER_ENV = "FASTNEMO_WORKER"  # set by ``launch`` in the processes it starts
MAIN_ONLY_STAGES = ("data", "start", "pack")  # rank 0 does them; the others wait for the manifest entry


# ------------------------------------------------------------------------------------------ the process


def world() -> int:
    """Processes of this run (1 outside a launched run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def is_worker() -> bool:
    """Inside processes started by a launcher (ours, or a user's own torchrun / accelerate launch)."""
    return WORKER_ENV in os.environ or "WORLD_SIZE" in os.environ


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(recipe: Recipe) -> None:
    """Join the process group (through accelerate, so the trainers reuse it: gloo on CPU, NCCL on GPUs) and
    keep the console to rank 0."""
    import torch
    from accelerate import PartialState

    expected = train_processes(recipe)
    if world() != expected:
        raise RecipeError(f"{recipe.source}: hardware.gpus = {recipe.hardware.gpus} (rollout_gpus "
                          f"{recipe.hardware.rollout_gpus}) means {expected} training processes, but this one was "
                          f"launched with WORLD_SIZE {world()}")
    # rank 0 alone builds the data mix and packs while the others wait: a long barrier is not a hang
    PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=6))
    if not is_main():
        from fastnemo.progress import console

        console.quiet = True  # N copies of every bar and table would bury rank 0's


def finished() -> None:
    """A launched process is done: the launching process reports the outcome (once, not N + 1 times)."""
    if WORKER_ENV in os.environ:
        from fastnemo.progress import console

        console.quiet = True


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (a picklable value)."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn, *args, **kwargs):
    """``fn`` on rank 0 only; every rank returns its result. An exception on rank 0 stops the launcher's
    group (torch.distributed.run ends the other processes when one fails)."""
    out = fn(*args, **kwargs) if is_main() else None
    return broadcast(out)


# ------------------------------------------------------------------------------------------- the recipe


def train_processes(recipe: Recipe) -> int:
    return recipe.hardware.train_processes


def check_machine(recipe: Recipe) -> str:
    """Can this machine run the recipe's processes? Returns a note; raises RecipeError naming the key."""
    import torch

    hw, where = recipe.hardware, recipe.source or "recipe"
    if torch.cuda.is_available():
        have = torch.cuda.device_count()
        if hw.gpus > have:
            raise RecipeError(f"{where}: hardware.gpus = {hw.gpus}, but this machine shows {have} CUDA GPU(s) "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        return f"hardware: {hw.gpus} of {have} GPUs ({hw.rollout_gpus} serving DAPO rollouts)"
    cores = os.cpu_count() or 1
    if hw.rollout_gpus:
        raise RecipeError(f"{where}: hardware.rollout_gpus needs CUDA GPUs (TRL's vLLM server); none here")
    if recipe.generation.engine == "vllm" or recipe.model.backend == "unsloth":
        raise RecipeError(f"{where}: hardware.gpus = {hw.gpus} without CUDA runs CPU processes over gloo: "
                          "those need model.backend = 'hf' and generation.engine = 'hf'")
    if hw.gpus > cores:
        raise RecipeError(f"{where}: hardware.gpus = {hw.gpus}: no CUDA GPU here, and {hw.gpus} CPU processes "
                          f"need at least as many cores (this machine has {cores})")
    return f"hardware: no CUDA GPU: {hw.gpus} CPU processes over gloo ({cores} cores)"


# ------------------------------------------------------------------------------------------- the launch


def launch_commands(recipe: Recipe, recipe_file: str) -> tuple[list[str], dict, list[str] | None, dict]:
    """(argv, env) of the training processes' launcher and, with ``rollout_gpus``, of TRL's vLLM server."""
    hw, n = recipe.hardware, train_processes(recipe)
    env = {WORKER_ENV: "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "fastnemo", "recipe", str(recipe_file)]
    import torch

    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    if not hw.rollout_gpus:
        return argv, env, None, {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(hw.gpus)]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    from fastnemo.config import resolve

    server = [shutil.which("trl") or "trl", "vllm-serve", "--model", str(resolve(recipe, recipe.model.path)),
              "--data-parallel-size", str(hw.rollout_gpus), "--port", str(hw.rollout_port),
              "--max-model-len", str(recipe.generation.max_model_len), "--dtype", "bfloat16"]
    return argv, env, server, {"CUDA_VISIBLE_DEVICES": ",".join(ids[n : hw.gpus])}


def launch(recipe: Recipe) -> None:
    """Run the recipe file in ``train_processes`` processes (plus the rollout server) and wait for them."""
    from fastnemo.progress import console

    if not recipe.source:
        raise RecipeError("hardware.gpus > 1: the run re-launches its recipe file, and this recipe has none "
                          "(read it with load_recipe)")
    from fastnemo.config import load_recipe, to_dict

    if to_dict(load_recipe(recipe.source)) != to_dict(recipe):  # the processes read the file, not this object
        raise RecipeError(f"{recipe.source}: the recipe was changed after it was read; hardware.gpus > 1 "
                          "re-launches the file, so save the change there")
    argv, env, server_argv, server_env = launch_commands(recipe, recipe.source)
    server = None
    if server_argv:
        console.print(f"starting TRL's vLLM server on GPUs {server_env['CUDA_VISIBLE_DEVICES']}: "
                      + " ".join(server_argv))
        server = subprocess.Popen(server_argv, env={**os.environ, **server_env})
    console.print(f"launching {train_processes(recipe)} processes: " + " ".join(argv[2:]))
    try:
        rc = subprocess.call(argv, env={**os.environ, **env})
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    if rc != 0:
        raise RuntimeError(f"the distributed run exited with code {rc} (the failing rank's error is above)")


def rollout_server_args(recipe: Recipe) -> dict:
    """TRL GRPOConfig settings that send DAPO's rollouts to the vLLM server (empty when colocated)."""
    hw = recipe.hardware
    if not hw.rollout_gpus:
        return {}
    return {"use_vllm": True, "vllm_mode": "server", "vllm_server_host": "127.0.0.1",
            "vllm_server_port": hw.rollout_port, "vllm_server_timeout": 1800.0}  # the server loads 60 GB first


# ----------------------------------------------------------------------------------- shard and merge


def shard(items: list, r: int, n: int) -> list:
    """Rank ``r``'s share of ``items``: every n-th from r (round-robin keeps the categories balanced)."""
    return items[r::n]


def merge(puzzles: list, records: dict[str, dict], what: str) -> list[dict]:
    """The records of ``puzzles``, in their order; every puzzle must have one."""
    missing = [p.id for p in puzzles if p.id not in records]
    if missing:
        raise RuntimeError(f"{what}: {len(missing)} prompts have no result after the shards finished "
                           f"(first {missing[:3]})")
    return [records[p.id] for p in puzzles]


def evaluate_shard(session, puzzles: list, sampling, out_path: Path, batch_size: int, r: int, n: int) -> Path:
    """Evaluate rank ``r``'s shard into ``results.rank{r}.jsonl`` beside ``out_path``; resumable."""
    from fastnemo.evaluate import evaluate
    from puzzles.files import move_into_place

    out_path = Path(out_path)
    mine = out_path.with_name(f"{out_path.stem}.rank{r}.jsonl")
    partial = mine.with_suffix(".partial.jsonl")
    if mine.exists() and not partial.exists():
        move_into_place(mine, partial)  # a finished shard: evaluate re-reads it and generates nothing
    evaluate(session, shard(puzzles, r, n), sampling, mine, batch_size=batch_size)
    return mine


def merge_eval(puzzles: list, out_path: Path) -> dict:
    """Join every rank's results file into ``out_path`` (the puzzles' order) and summarize it."""
    from fastnemo.evaluate import summarize, table
    from fastnemo.progress import console
    from puzzles.files import read_jsonl, write_jsonl

    out_path = Path(out_path)
    records = {}
    for f in sorted(out_path.parent.glob(f"{out_path.stem}.rank*.jsonl")):
        if ".partial" not in f.name:
            records.update((r["id"], r) for r in read_jsonl(f, strict=True))
    results = merge(puzzles, records, f"eval {out_path.parent.name}")
    write_jsonl(out_path, results)
    summary = summarize(results)
    console.print(table(summary))
    return summary


def evaluate_sharded(session, puzzles: list, sampling, out_path: Path, batch_size: int = 64) -> dict:
    """``fastnemo.evaluate.evaluate`` over all processes: the same results file, the same summary."""
    evaluate_shard(session, puzzles, sampling, out_path, batch_size, rank(), world())
    barrier()
    return on_main(merge_eval, puzzles, out_path)


def distill_sharded(session, recipe: Recipe, out_dir: Path, seed: int = 0, log=None) -> dict:
    """``fastnemo.distill.run`` over all processes: each samples its shard into its own cache (reading every
    cache of the folder as done, so a resume with another N redoes nothing), rank 0 writes the outputs."""
    from fastnemo import distill

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    puzzles = distill.load_prompts(recipe, seed)
    if not puzzles:
        raise ValueError("distill: no prompts (distill.prompts is 0 or distill.data is empty)")
    mine = out_dir / f"generations.rank{rank()}.jsonl"
    distill.read_cache(mine)  # cuts its own torn tail while nobody reads it
    barrier()
    done = read_caches(out_dir)
    barrier()  # everyone has read before anyone appends
    t0 = time.time()
    distill.sample(session, recipe.distill, shard(puzzles, rank(), world()), done, mine, seed,
                   positions={p.id: i for i, p in enumerate(puzzles)}, log=log)
    barrier()

    def finish():
        return distill.finish(puzzles, read_caches(out_dir), recipe.distill, out_dir, seconds=time.time() - t0)

    return on_main(finish)


def read_caches(out_dir: Path) -> dict[str, dict]:
    """Every distill cache record of ``out_dir`` (one process's and each rank's), by puzzle id; a line cut
    short by a crash is skipped (its owner cuts it off before appending)."""
    from puzzles.files import read_jsonl

    done = {}
    for f in sorted(Path(out_dir).glob("generations*.jsonl")):
        done.update((r["id"], r) for r in read_jsonl(f))
    return done
