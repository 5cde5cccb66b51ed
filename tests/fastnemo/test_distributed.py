"""N processes of one host (fastnemo.distributed), on the CPU: the real launcher (torch.distributed.run), real
gloo process groups, the real trainers under accelerate's DDP, real generation on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastnemo import distributed
from fastnemo.config import Recipe, RecipeError, SamplingConfig, load_recipe, per_rank
from fastnemo.recipe import run_recipe

# varied lengths: each rank pads its own half of a step, the loss must still be the global token mean
ROWS = [
    {"id": f"r{i}", "category": "equations", "prompt": f"In Alice's Wonderland, {i} + {i * 7} = ?",
     "answer": str(8 * i), "completion": "Add them. " * (1 + i % 3) + f"</think>\n\\boxed{{{8 * i}}}"}
    for i in range(8)
]


def write_recipe(tiny_recipe, folder: Path, stages: list[str], hardware: dict, **keys) -> Path:
    """The tiny recipe on these ROWS, 3 SFT steps, with the test's [hardware] table."""
    return tiny_recipe(folder, stages, rows=ROWS, name="dist", hardware=hardware, sft={"max_steps": 3}, **keys)


def adapter_weights(run_dir: Path, key: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / key / "adapter" / "adapter_model.safetensors")


def test_two_gloo_processes_train_the_same_adapter_as_one(tmp_path, tiny_recipe):
    """DDP over 2 CPU processes, 2 rows each, = 1 process with the same global batch of 4 (same rows, same
    order, the loss a mean over the global batch's tokens): the same LoRA weights up to float rounding."""
    one = run_recipe(load_recipe(write_recipe(tiny_recipe, tmp_path / "one", ["data", "sft"], {"gpus": 1})))
    two = run_recipe(load_recipe(write_recipe(tiny_recipe, tmp_path / "two", ["data", "sft"], {"gpus": 2})))
    a, b = adapter_weights(one.path, "r1-sft"), adapter_weights(two.path, "r1-sft")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)  # |weights| ~1e-3, measured gap 2e-8
    # the adapters trained at all (a no-op training would match trivially): lora_B starts at zero
    moved = sum(int(a[k].abs().sum() > 0) for k in a if "lora_B" in k)
    assert moved > 0
    m1 = json.loads((one.path / "manifest.json").read_text())["stages"]["r1-sft"]["summary"]
    m2 = json.loads((two.path / "manifest.json").read_text())["stages"]["r1-sft"]["summary"]
    assert m1["steps"] == m2["steps"] == 3
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-4)


def test_a_sharded_evaluation_merges_to_the_unsharded_results_file(tmp_path, tiny_session):
    """Three shards (round-robin), each evaluated into its own file, merge into byte for byte the file one
    process writes; a finished shard evaluated again generates nothing."""
    from fastnemo.evaluate import evaluate
    from fastnemo.recipe import Context, validation_set

    puzzles = validation_set(Context(recipe=Recipe(), run=None))[:7]
    sampling = SamplingConfig(max_tokens=6)
    (tmp_path / "one").mkdir()
    whole = evaluate(tiny_session, puzzles, sampling, tmp_path / "one" / "results.jsonl", batch_size=1)
    out = tmp_path / "three" / "results.jsonl"
    out.parent.mkdir()
    for r in range(3):
        distributed.evaluate_shard(tiny_session, puzzles, sampling, out, 1, r, 3)
    assert [len(out.with_name(f"results.rank{r}.jsonl").read_text().splitlines()) for r in range(3)] == [3, 2, 2]
    merged = distributed.merge_eval(puzzles, out)
    assert out.read_bytes() == (tmp_path / "one" / "results.jsonl").read_bytes()
    assert merged == whole

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished shard must not generate again")

    tiny_session.generate = no_generation
    distributed.evaluate_shard(tiny_session, puzzles, sampling, out, 1, 0, 3)
    out.with_name("results.rank2.jsonl").unlink()  # a shard that never finished: the merge refuses
    with pytest.raises(RuntimeError, match="2 prompts have no result"):
        distributed.merge_eval(puzzles, out)


@pytest.mark.parametrize(("batch", "accum", "n", "want"), [
    (4, 1, 2, (2, 1)), (1, 8, 2, (1, 4)), (4, 8, 2, (4, 4)), (2, 2, 4, (1, 1)), (3, 4, 2, (3, 2)), (4, 2, 1, (4, 2)),
])
def test_per_rank_keeps_the_global_batch(batch, accum, n, want):
    assert per_rank(batch, accum, n) == want
    assert want[0] * want[1] * n == batch * accum and want[0] <= batch


def test_hardware_errors_name_the_key(tmp_path, tiny_recipe):
    bad = [
        ({"gpus": 0}, "hardware.gpus must be >= 1"),
        ({"gpus": 2, "rollout_gpus": 2}, "rollout_gpus must be in 0..gpus-1"),
        ({"gpus": 2, "rollout_gpus": 1}, "stages have no 'grpo'"),
        ({"gpus": 3}, "4 rows per step does not split over 3"),
    ]
    for i, (hardware, message) in enumerate(bad):
        p = write_recipe(tiny_recipe, tmp_path / str(i), ["data", "sft"], hardware)
        with pytest.raises(RecipeError, match=message):
            load_recipe(p)


def test_the_machine_decides_how_many_processes(tmp_path, tiny_recipe, monkeypatch):
    """No CUDA: up to one CPU process per core, hf backend and engine only."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    r = load_recipe(write_recipe(tiny_recipe, tmp_path, ["data", "sft"], {"gpus": 2}))
    assert "2 CPU processes over gloo" in distributed.check_machine(r)
    r.hardware.gpus = 4
    r.sft.batch_size = 8
    with pytest.raises(RecipeError, match="need at least as many cores"):
        distributed.check_machine(r)
    r.hardware.gpus, r.generation.engine = 2, "vllm"
    with pytest.raises(RecipeError, match="generation.engine = 'hf'"):
        distributed.check_machine(r)


def test_rollout_gpus_start_trls_vllm_server_on_the_last_gpus(tmp_path, tiny_recipe, monkeypatch):
    """The wiring of DAPO's server mode (GPU only, so checked as commands and TRL settings here)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    p = write_recipe(tiny_recipe, tmp_path, ["data", "sft", "grpo"], {"gpus": 4, "rollout_gpus": 2},
                     grpo={"group_size": 4, "batch_prompts": 2})
    r = load_recipe(p)
    argv, env, server, server_env = distributed.launch_commands(r, str(p))
    assert "--nproc-per-node=2" in argv and argv[-3:] == ["fastnemo", "recipe", str(p)]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and server_env == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert server[1:3] == ["vllm-serve", "--model"]
    assert server[server.index("--data-parallel-size") + 1] == "2"
    assert distributed.rollout_server_args(r)["vllm_mode"] == "server"
    r.hardware.rollout_gpus = 0
    assert distributed.rollout_server_args(r) == {}
    assert distributed.launch_commands(r, str(p))[2] is None


def smoke_recipe(tmp_path: Path, model_dir: Path, gpus: int) -> Path:
    """recipes/smoke.toml, one round and smaller, on ``gpus`` processes."""
    text = (Path(__file__).resolve().parents[2] / "recipes" / "smoke.toml").read_text()
    for old, new in [("rounds = 2", "rounds = 1"), ('run_dir = "../runs/smoke"', 'run_dir = "run"'),
                     ('path = "../models/tiny-nemotron"', f'path = "{model_dir}"'), ("n = 240", "n = 36"),
                     ("max_steps = 12", "max_steps = 4"), ("n_generated = 24", "n_generated = 10"),
                     ("prompts = 12", "prompts = 6"), ("prompts = 24", "prompts = 8"), ("max_steps = 3", "max_steps = 2")]:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / "smoke.toml"
    p.write_text(text + f"\n[hardware]\ngpus = {gpus}\n")
    return p


@pytest.mark.slow  # 43 s on 2 idle cores, ~110 s on busy ones: two processes start and run every stage
def test_gpus_2_runs_the_smoke_recipe_through_two_gloo_processes(tmp_path, tiny_model_dir):
    """Every stage of the smoke recipe (data, SFT, eval, distill, DAPO, eval, pack) on 2 CPU processes:
    generation sharded per rank and merged in order, training data-parallel, one writer of the run."""
    from fastnemo.recipe import Context, plan_keys, validation_set

    recipe = load_recipe(smoke_recipe(tmp_path, tiny_model_dir, 2))
    run = run_recipe(recipe)
    stages = run.manifest()["stages"]
    assert list(stages) == [k for _, _, k in plan_keys(recipe)]
    ids = [p.id for p in validation_set(Context(recipe=recipe, run=run))]
    for key in ("r1-eval-sft", "r1-eval-grpo"):
        rows = [json.loads(x) for x in (run.path / key / "results.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ids  # merged in the validation set's order
        shards = [[json.loads(x)["id"] for x in (run.path / key / f"results.rank{r}.jsonl").read_text().splitlines()]
                  for r in (0, 1)]
        assert shards == [ids[0::2], ids[1::2]]  # each rank generated its own half
        assert stages[key]["summary"]["n"] == len(ids)
    distilled = run.path / "r1-distill"
    assert {f.name for f in distilled.glob("generations*.jsonl")} == {"generations.rank0.jsonl",
                                                                      "generations.rank1.jsonl"}
    assert len((distilled / "passrates.jsonl").read_text().splitlines()) == 6
    assert stages["r1-sft"]["summary"]["steps"] == 4 and stages["r1-grpo"]["summary"]["steps"] == 2
    sft_logs = [m for m in run.read_metrics() if m.get("stage") == "r1-sft" and "loss" in m]
    assert [m["step"] for m in sft_logs] == [2, 4]  # rank 0 alone writes metrics.jsonl
    assert (run.path / "pack" / "submission.zip").exists()
