"""Fuzz the readers of user input (hypothesis): CSV (puzzles.dataset, the scorer's rows), TOML (the recipe),
JSONL (files.read_jsonl and `data audit`) and the submission zip (pack.verify). Every input is either
accepted or refused with an ``InputError`` (one line naming the file; the CLI prints it without a traceback);
any other exception is a traceback and any input that takes longer than ``HANG_S`` is a hang. Both fail the
test. The counts are printed in the terminal summary (tests/conftest.py ``fault_counts``).

Derandomized: CI sees the same inputs every run; about 12 s of CPU for the whole file."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import signal
import zipfile
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnemo.files import InputError

HANG_S = 10
FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_N", 60)), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
CLEAN = (InputError, click.UsageError)  # click.UsageError: the scorer's own one-line refusals

NUMERAL = ("In Alice's Wonderland, numbers are secretly converted into a different numeral system. Some examples "
           "are given below:\n11 -> XI\n15 -> XV\n94 -> XCIV\nNow, write the number 38 in the Wonderland numeral "
           "system.")
GRAVITY = ("In Alice's Wonderland, the gravitational constant has been secretly changed. Here are some example "
           "observations:\nFor t = 1.37s, distance = 14.92 m\nFor t = 4.27s, distance = 144.96 m\n"
           "Now, determine the falling distance for t = 4.41s given d = 0.5*g*t^2.")


class Hang(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    def fire(*_):
        raise Hang(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    # a hang inside C (a huge int power) never runs the signal handler: a watchdog thread ends the process
    # instead, with every thread's stack, so CI fails rather than waits forever
    faulthandler.dump_traceback_later(6 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def outcome(counts, fn) -> None:
    """Run ``fn`` (one reader on one fuzzed input) and count what came of it: "calls" splits into accepted,
    clean errors, tracebacks and hangs; a traceback or a hang fails the example."""
    counts["calls"] += 1
    try:
        with alarm(HANG_S):
            fn()
    except CLEAN as e:
        assert "\n" not in str(e).strip(), f"a multi-line error: {e}"
        counts["clean errors"] += 1
    except Hang:
        counts["hangs"] += 1
        raise
    except Exception:
        counts["tracebacks"] += 1
        raise
    else:
        counts["accepted"] += 1


def _file(tmp: Path, name: str, data: bytes) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / name
    path.write_bytes(data)
    return path


ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


# ------------------------------------------------------------------------------------------------ CSV


@st.composite
def csv_files(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=600))
    header = draw(st.sampled_from([["id", "prompt", "answer"], ["id", "prompt"], ["prompt", "answer"],
                                   ["id", "prompt", "answer", "extra"], []]))
    rows = draw(st.lists(st.lists(st.one_of(TEXT, st.sampled_from([NUMERAL, GRAVITY, "XXXVIII", "", "\x00"])),
                                  min_size=0, max_size=5), max_size=6))
    buf = io.StringIO()
    import csv

    csv.writer(buf).writerows([header, *rows] if header else rows)
    text = buf.getvalue()
    if draw(st.booleans()):
        text = text.replace('"', "")  # unbalanced quoting
    return text.encode(draw(ENCODINGS), errors="replace")


@FUZZ
@given(data=csv_files(), skip_bad=st.booleans())
def test_fuzz_csv_readers(tmp_path, fault_counts, data, skip_bad):
    from fastnemo.score import read_rows
    from puzzles.dataset import read_csv

    path = _file(tmp_path / "csv", "t.csv", data)
    counts = fault_counts["fuzz csv"]
    counts["inputs"] += 1
    outcome(counts, lambda: read_csv(path, require_answer=skip_bad, skip_bad=skip_bad))
    outcome(counts, lambda: read_rows(path))


# ------------------------------------------------------------------------------------------------ TOML


def _keys() -> list[str]:
    from fastnemo.config import iter_keys

    return [name for name, _, _ in iter_keys()]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


SCALARS = st.one_of(st.integers(-(2**80), 2**80), st.floats(), st.booleans(), TEXT,
                    st.sampled_from(["hf", "vllm", "sft", "q_proj", "cipher", "auto"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


@st.composite
def recipes(draw) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=400))
    keys = draw(st.lists(st.sampled_from(_keys()), max_size=6, unique=True))
    lines = [f"{k} = {_toml_value(draw(VALUES))}" for k in keys]
    if draw(st.integers(0, 5)) == 0:
        lines.append("x = " + "[" * draw(st.integers(100, 5000)))
    return "\n".join(lines).encode(draw(ENCODINGS), errors="replace")


@FUZZ
@given(data=recipes(), override=st.one_of(st.none(), st.tuples(st.sampled_from(_keys()), VALUES)))
def test_fuzz_recipe_reader(tmp_path, fault_counts, data, override):
    from fastnemo.config import load_recipe

    path = _file(tmp_path / "toml", "r.toml", data)
    overrides = [f"{override[0]}={_toml_value(override[1])}"] if override else []
    fault_counts["fuzz toml"]["inputs"] += 1
    outcome(fault_counts["fuzz toml"], lambda: load_recipe(path, overrides))


# ------------------------------------------------------------------------------------------------ JSONL

ARITH = st.lists(st.sampled_from(["9", "99", "^", "^9^9^9", "*", "/", "0", "(", ")", " = ", "1.5", "-", "+",
                                  "\n", "e", "\u00e9", " -> ", ": ", "</think>", "\\boxed{", "}", "2^10"]),
                 max_size=40).map("".join)
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)


@st.composite
def sft_rows(draw) -> dict:
    row = {"id": draw(TEXT), "prompt": draw(st.sampled_from([NUMERAL, GRAVITY, "", "hello"])),
           "completion": draw(ARITH), "answer": draw(st.sampled_from(["XXXVIII", "50.34", "", "1"])),
           "category": draw(st.sampled_from(["numeral_system", "gravity", "nope"]))}
    for k in draw(st.lists(st.sampled_from(list(row)), max_size=2)):  # a field of the wrong type, or gone
        if draw(st.booleans()):
            row[k] = draw(JSON_VALUES)
        else:
            row.pop(k, None)
    return row


@st.composite
def jsonl_files(draw) -> bytes:
    lines = [json.dumps(draw(st.one_of(sft_rows(), JSON_VALUES)), ensure_ascii=draw(st.booleans())).encode()
             for _ in range(draw(st.integers(0, 5)))]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.binary(max_size=60)))  # a bad line somewhere
    data = b"\n".join(lines) + b"\n"
    if data and draw(st.booleans()):  # torn: a kill mid-append, maybe inside a multi-byte character
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


@FUZZ
@given(data=jsonl_files(), strict=st.booleans())
def test_fuzz_jsonl_readers_and_the_audit(tmp_path, fault_counts, data, strict):
    from fastnemo.files import read_jsonl
    from puzzles.audit import audit_file

    path = _file(tmp_path / "jsonl", "rows.jsonl", data)
    counts = fault_counts["fuzz jsonl"]
    counts["inputs"] += 1
    outcome(counts, lambda: read_jsonl(path, strict=strict))
    outcome(counts, lambda: audit_file(path, None, workers=1))  # `data audit`: it hung on 9^9^9


# ------------------------------------------------------------------------------------------------ zip

BASE = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
GOOD = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none",
        "base_model_name_or_path": BASE}
FIELDS = ["r", "lora_alpha", "target_modules", "bias", "rank_pattern", "alpha_pattern", "use_dora",
          "modules_to_save", "target_parameters", "use_rslora", "peft_type", "init_lora_weights", "lora_bias"]


def _weights(r: int) -> bytes:
    import torch
    from safetensors.torch import save

    key = "base_model.model.backbone.layers.0.mixer.q_proj.lora_{}.weight"
    return save({key.format("A"): torch.ones(r, 8), key.format("B"): torch.zeros(8, r)})


@st.composite
def zips(draw) -> bytes:
    cfg = dict(GOOD)
    for k in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        cfg[k] = draw(st.one_of(VALUES, st.sampled_from([8.0, "8", None, [], {}, ["q_proj", "q_proj"]])))
    raw = json.dumps(cfg, allow_nan=True).encode(draw(st.sampled_from(["utf-8", "utf-16"])))
    if draw(st.integers(0, 6)) == 0:
        raw = draw(st.sampled_from([b"[]", b'{"r": ' + b"9" * 5000 + b"}", b"[" * 50_000, b"{"]))
    entries = [("adapter_config.json", raw),
               ("adapter_model.safetensors", _weights(4) if draw(st.booleans()) else draw(st.binary(max_size=200)))]
    for _ in range(draw(st.integers(0, 2))):
        entries.append(draw(st.tuples(st.sampled_from(["adapter_config.json", "../x", "a/adapter_config.json",
                                                       "notes/", "adapter_model.safetensors"]),
                                      st.binary(max_size=50))))
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # duplicate names are part of the fuzz
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 3))):  # flipped bytes anywhere: headers, flags, methods, sizes, CRCs
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=zips())
def test_fuzz_verify(tmp_path, fault_counts, data):
    from fastnemo.pack import verify

    path = _file(tmp_path / "zip", "submission.zip", data)
    fault_counts["fuzz zip"]["inputs"] += 1
    outcome(fault_counts["fuzz zip"], lambda: verify(path, None, BASE))


@pytest.fixture(autouse=True)
def _quiet_torch_threads():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
