"""The GPU lane's validation and full-size recipe scripts: the parts that run on any machine."""

import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.device import recipe_fullsize, validation


def test_validation_set_is_100_a_category_in_stratified_order():
    rows = validation.load_set()
    counts = collections.Counter(r["category"] for r in rows)
    assert len(counts) == 6 and set(counts.values()) == {validation.PER_CATEGORY}
    assert len({r["category"] for r in rows[:6]}) == 6  # round robin, as the eval stage orders them
    assert all(r["est_tokens"] >= 2 and r["prompt"] and r["answer"] for r in rows)


def test_agreement_counts_differing_outputs_and_where_they_diverge():
    a = {"p1": [1, 2, 3], "p2": [4, 5, 6], "p3": [7, 8], "p4": [1]}
    b = {"p1": [1, 2, 3], "p2": [4, 9, 6], "p3": [7, 8, 9], "p5": [2]}
    got = validation.agreement(a, b)
    assert got == {"compared": 3, "outputs_differing": 2, "first_divergence_median": 1.5}


def test_memory_sampler_peak_is_the_stage_window():
    s = recipe_fullsize.MemorySampler(period=1.0)
    s.samples = [(10.0, 1024.0), (11.0, 8192.0), (20.0, 4096.0), (30.0, 2048.0)]
    assert s.peak_gib(10.0, 15.0) == 8.0
    assert s.peak_gib(19.5, 30.0) == 4.0
    assert s.peak_gib(40.0, 50.0) is None


def test_vllm_memory_reads_a_start_and_a_refusal():
    """The lines vLLM 0.26 logged on the lane (2026-12-07): a start at 0.92, and the harness child's refusal
    when the released trainer still held its memory."""
    started = ("INFO [gpu_worker.py:560] Available KV cache memory: 8.16 GiB\n"
               "INFO [kv_cache_utils.py:2177] GPU KV cache size: 268,288 tokens\n"
               "INFO [kv_cache_utils.py:2178] Maximum concurrency for 8,192 tokens per request: 32.75x\n"
               "INFO [gpu_worker.py:857] Free memory on device (78.66/79.18 GiB) on startup. Desired GPU memory "
               "utilization is (0.92, 72.84 GiB).\n")
    assert recipe_fullsize.vllm_memory(started) == {"free_at_start_gib": 78.66, "kv_cache_gib": 8.16,
                                                    "kv_cache_tokens": 268288.0, "max_concurrency": 32.75}
    harness = "harness: engine started in 131 s\nharness: adapter ready after 70 s (prepared while the engine starts)\n"
    assert recipe_fullsize.vllm_memory(started + harness) == {
        "free_at_start_gib": 78.66, "kv_cache_gib": 8.16, "kv_cache_tokens": 268288.0, "max_concurrency": 32.75,
        "engine_start_s": 131.0, "adapter_ready_s": 70.0}
    refused = ("ValueError: Free memory on device cuda:0 (17.34/79.18 GiB) on startup is less than desired GPU "
               "memory utilization (0.92, 72.84 GiB).")
    assert recipe_fullsize.vllm_memory(refused) == {"free_at_start_gib": 17.34}


def test_weights_are_saved_once_and_a_second_caller_waits_for_them(tmp_path):
    """The lane saves the full-size weights in the background while it stages wheels; the recipe started
    meanwhile must wait for that save, not start a second one or load half-written shards."""
    import threading
    import time

    from bench.device.fullsize import SAVED, save_once

    calls = []

    def slow_save(out):
        calls.append(out)
        (out / "model-00001.safetensors").write_text("shard")
        time.sleep(0.5)
        (out / "model.safetensors.index.json").write_text("{}")

    first = threading.Thread(target=save_once, args=(tmp_path, slow_save))
    first.start()
    time.sleep(0.1)  # the first caller holds the lock and is mid-save
    save_once(tmp_path, slow_save)
    assert (tmp_path / "model.safetensors.index.json").exists() and (tmp_path / SAVED).exists()
    first.join()
    assert len(calls) == 1 and not (tmp_path / ".partial").exists()
    save_once(tmp_path, slow_save)  # later runs find the weights saved
    assert len(calls) == 1
