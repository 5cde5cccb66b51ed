"""Bad input fails fast with a message naming the file, field or row, and leaves the run dir consistent."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastnemo.cli import main

HEADER = "id,prompt,answer\n"
GOOD_ROW = ('a1,"In Alice\'s Wonderland, numbers are secretly converted into a different numeral system. '
            'Some examples are given below:\n12 -> XII\n7 -> VII\nNow, write the number 9 in the Wonderland '
            'numeral system.",IX\n')


def write_recipe(tmp_path, model: str, **tables) -> str:
    lines = ['name = "bad"', 'run_dir = "run"', 'stages = ["data", "sft", "eval", "pack"]',
             f'[model]\npath = "{model}"']
    for table, body in tables.items():
        lines.append(f"[{table}]\n{body}")
    path = tmp_path / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run(recipe: str, *args):
    return CliRunner().invoke(main, ["recipe", *args, recipe])


def test_missing_train_csv_is_named_before_any_work(tmp_path, tiny_model_dir):
    r = run(write_recipe(tmp_path, tiny_model_dir, eval='data = "train.csv"'))
    assert r.exit_code != 0
    assert "eval.data" in r.output and "train.csv" in r.output and "no such file" in r.output
    assert not (tmp_path / "run").exists()  # nothing started


def test_malformed_train_csv_names_the_row(tmp_path, tiny_model_dir):
    (tmp_path / "train.csv").write_text(HEADER + GOOD_ROW + 'a2,"In Alice\'s Wonderland, numbers...",\n')
    r = run(write_recipe(tmp_path, tiny_model_dir, eval='data = "train.csv"'))
    assert r.exit_code != 0
    assert "row 2" in r.output and "empty answer" in r.output


def test_unplaceable_prompt_names_the_row(tmp_path, tiny_model_dir):
    (tmp_path / "train.csv").write_text(HEADER + GOOD_ROW + 'a2,"What is the capital of France?",Paris\n')
    r = run(write_recipe(tmp_path, tiny_model_dir, eval='data = "train.csv"'), "--check")
    assert r.exit_code != 0
    assert "row 2" in r.output and "unparseable prompt" in r.output


def test_model_path_without_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "nemotron_h"}))
    r = run(write_recipe(tmp_path, model))
    assert r.exit_code != 0
    assert "no weights" in r.output and str(model) in r.output


def test_missing_model_without_tiny_is_an_error(tmp_path):
    r = run(write_recipe(tmp_path, tmp_path / "nowhere"))
    assert r.exit_code != 0 and "model.path" in r.output and "config.json" in r.output


def test_empty_dataset_after_filtering_stops_with_a_message_and_no_manifest_entry(tmp_path, tiny_model_dir):
    (tmp_path / "empty.jsonl").write_text("")
    r = run(write_recipe(tmp_path, tiny_model_dir, data='path = "empty.jsonl"'))
    assert r.exit_code != 0
    assert "empty" in r.output and "nothing to train on" in r.output
    manifest = tmp_path / "run" / "manifest.json"
    assert not manifest.exists() or "r1-data" not in json.loads(manifest.read_text())["stages"]


def test_a_data_path_of_blank_lines_is_refused_not_recorded_as_rows(tmp_path, tiny_model_dir):
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    r = run(write_recipe(tmp_path, tiny_model_dir, data='path = "blank.jsonl"'))
    assert r.exit_code != 0 and "blank.jsonl" in r.output and "only blank lines" in r.output
    manifest = tmp_path / "run" / "manifest.json"
    assert not manifest.exists() or "r1-data" not in json.loads(manifest.read_text())["stages"]


def test_a_verify_failure_at_pack_is_one_line_not_a_traceback(tmp_path, tiny_session, tiny_model_dir):
    """An adapter with a NaN weight (what a NaN learning rate trains) reaches pack: verify refuses it, and the
    CLI prints the VerifyError as a message (it used to escape as a traceback)."""
    from safetensors.torch import load_file, save_file

    adapter = tiny_session.save_adapter(tmp_path / "nan-adapter")
    tensors = load_file(adapter / "adapter_model.safetensors")
    next(iter(tensors.values())).fill_(float("nan"))
    save_file(tensors, adapter / "adapter_model.safetensors")
    recipe = write_recipe(tmp_path, tiny_model_dir)
    text = (tmp_path / "recipe.toml").read_text().replace('stages = ["data", "sft", "eval", "pack"]',
                                                          f'stages = ["pack"]\nstart_from = "{adapter}"')
    (tmp_path / "recipe.toml").write_text(text)
    r = run(recipe)
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert "NaN or inf" in r.output and "Traceback" not in r.output
