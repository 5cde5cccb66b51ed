"""N GPUs of one host: the same recipe, data-parallel, on the engines people already trust. This module holds
the process primitives (world, rank, barrier, broadcast, launch); the stages own what they do with them.

``[hardware] gpus = N`` (``fastnemo.config.HardwareConfig``). ``run_recipe`` then re-launches the recipe's
command line (its file, its KEY=VALUE overrides, ``--redo``) as N processes with ``torch.distributed.run``
(what ``accelerate launch`` runs underneath; the user writes no launch line) and waits for them; each process
checks that it read rank 0's recipe. Each holds the base model, the LoRA and one generation engine:

- SFT and DAPO train data-parallel: the TRL trainers run under accelerate's DDP (it reads the launcher's
  environment), the recipe's batch sizes stay global (``fastnemo.config.per_rank`` and ``micro_batches`` split
  them), so 1 and N processes take the same optimizer steps on the same rows.
- Eval and distill shard the prompts round-robin over the processes (``shard``; ``fastnemo.evaluate`` and
  ``fastnemo.distill`` each own their sharded path); each process writes and resumes its own file (``results.rank{r}.jsonl``, ``generations.rank{r}.jsonl``), rank 0 merges them in the
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

from fastnemo.config import Recipe, RecipeError, to_dict

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

    expected = recipe.hardware.train_processes
    if world() != expected:
        raise RecipeError(f"{recipe.source}: hardware.gpus = {recipe.hardware.gpus} (rollout_gpus "
                          f"{recipe.hardware.rollout_gpus}) means {expected} training processes, but this one was "
                          f"launched with WORLD_SIZE {world()}")
    # rank 0 alone builds the data mix and packs while the others wait: a long barrier is not a hang
    PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=6))
    same_recipe(to_dict(recipe), broadcast(to_dict(recipe)), recipe.source)
    if not is_main():
        from fastnemo.progress import console

        console.quiet = True  # N copies of every bar and table would bury rank 0's


def same_recipe(mine: dict, main: dict, where: str) -> None:
    """Every process must run rank 0's recipe (the same keys, overrides included): a process that read other
    values would train out of step and hang the others at their next collective, so it stops here."""
    from fastnemo.provenance import flat

    a, b = flat(mine), flat(main)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if differ:
        raise RecipeError(f"{where}: process {rank()} read other recipe keys than rank 0: "
                          + ", ".join(f"{k} = {a.get(k)!r} (rank 0: {b.get(k)!r})" for k in differ[:5]))


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


# ------------------------------------------------------------------------------------------ the machine


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


def launch_commands(recipe: Recipe, redo: tuple[str, ...] = ()) -> tuple[list[str], dict, list[str] | None, dict]:
    """(argv, env) of the training processes' launcher and, with ``rollout_gpus``, of TRL's vLLM server. Each
    process runs the recipe's command line: its file, its KEY=VALUE overrides and the ``--redo`` stages."""
    hw, n = recipe.hardware, recipe.hardware.train_processes
    env = {WORKER_ENV: "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "fastnemo", "recipe", str(recipe.source), *recipe.overrides,
            *(arg for stage in redo for arg in ("--redo", stage))]
    import torch

    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    if not hw.rollout_gpus:
        return argv, env, None, {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(hw.gpus)]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    server = [shutil.which("trl") or "trl", "vllm-serve", "--model", str(recipe.paths.model),
              "--data-parallel-size", str(hw.rollout_gpus), "--port", str(hw.rollout_port),
              "--max-model-len", str(recipe.generation.max_model_len), "--dtype", "bfloat16"]
    return argv, env, server, {"CUDA_VISIBLE_DEVICES": ",".join(ids[n : hw.gpus])}


def launch(recipe: Recipe, redo: tuple[str, ...] = ()) -> None:
    """Run the recipe's command line (file, overrides, ``redo``) in ``hardware.train_processes`` processes
    (plus the rollout server) and wait for them."""
    from fastnemo.progress import console

    if not recipe.source:
        raise RecipeError("hardware.gpus > 1: the run re-launches its recipe file, and this recipe has none "
                          "(read it with load_recipe)")
    from fastnemo.config import load_recipe

    # the processes read the file and the overrides, not this object
    if to_dict(load_recipe(recipe.source, recipe.overrides)) != to_dict(recipe):
        raise RecipeError(f"{recipe.source}: the recipe was changed after it was read; hardware.gpus > 1 "
                          "re-launches the file, so save the change there")
    argv, env, server_argv, server_env = launch_commands(recipe, redo)
    server = None
    if server_argv:
        console.print(f"starting TRL's vLLM server on GPUs {server_env['CUDA_VISIBLE_DEVICES']}: "
                      + " ".join(server_argv))
        server = subprocess.Popen(server_argv, env={**os.environ, **server_env})
    console.print(f"launching {recipe.hardware.train_processes} processes: " + " ".join(argv[2:]))
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


# ---------------------------------------------------------------------------------------------- shards


def shard(items: list, r: int | None = None, n: int | None = None) -> list:
    """Rank ``r``'s share of ``items`` (default: this process's of this run's): every n-th from r
    (round-robin keeps the categories balanced)."""
    r, n = rank() if r is None else r, world() if n is None else n
    return items[r::n]
