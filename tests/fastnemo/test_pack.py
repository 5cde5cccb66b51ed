"""pack / verify on real adapters of the tiny nemotron_h model: a good zip passes (also loaded for real), each
way a submission can be broken is caught and named, and a plain-PEFT adapter (no fastnemo) is accepted."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from fastnemo.config import ModelConfig
from fastnemo.pack import REQUIRED, VerifyError, pack, verify

BASE = ModelConfig.base_model_name


@pytest.fixture()
def adapter(tiny_session, tmp_path) -> Path:
    return tiny_session.save_adapter(tmp_path / "adapter")


@pytest.fixture()
def good_zip(adapter, tmp_path) -> Path:
    return pack(adapter, tmp_path / "submission.zip")


def rezip(src: Path, dst: Path, config_edit=None, drop: str | None = None) -> Path:
    """A copy of ``src`` with adapter_config.json edited by ``config_edit`` and/or one member dropped."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    if config_edit:
        cfg = json.loads(members["adapter_config.json"])
        config_edit(cfg)
        members["adapter_config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            if n != drop:
                zf.writestr(n, data)
    return dst


# ------------------------------------------------------------------------------------------------ good


def test_pack_layout(good_zip, adapter):
    with zipfile.ZipFile(good_zip) as zf:
        assert sorted(zf.namelist()) == sorted(REQUIRED)  # at the root, nothing else
        for n in REQUIRED:
            assert zf.read(n) == (adapter / n).read_bytes()
    assert not list(good_zip.parent.glob(".submission.zip.*"))  # no temp file left


def test_verify_accepts_a_fastnemo_adapter(good_zip, tiny_model_dir):
    report = verify(good_zip, tiny_model_dir, BASE)
    assert report["rank"] == 4 and report["alpha"] == 8
    assert report["base_model_name_or_path"] == BASE
    assert set(report["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj",
                                             "down_proj"}
    assert report["tensors"] > 0 and report["params"] > 0 and report["bytes"] == good_zip.stat().st_size


def test_verify_with_load_runs_the_adapter(good_zip, tiny_model_dir):
    report = verify(good_zip, tiny_model_dir, BASE, load=True)
    assert report["tensors"] > 0


def test_verify_config_only_without_model(good_zip):
    report = verify(good_zip, None, BASE)
    assert "tensors" not in report and report["rank"] == 4


def test_verify_accepts_plain_peft_adapter(tiny_model_dir, tmp_path):
    """An adapter made with PEFT directly (as a user might, outside fastnemo) passes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "in_proj"],
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "plain")
    z = pack(tmp_path / "plain", tmp_path / "plain.zip")
    name = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())["base_model_name_or_path"]
    report = verify(z, tiny_model_dir, None, load=True)  # --base-model ''
    assert report["rank"] == 8 and report["target_modules"] == ["in_proj", "q_proj", "v_proj"]
    verify(z, tiny_model_dir, name)  # or the name PEFT wrote
    with pytest.raises(VerifyError, match="base_model_name_or_path"):
        verify(z, tiny_model_dir, BASE)


# ------------------------------------------------------------------------------------------------- pack


def test_pack_refuses_to_overwrite(good_zip, adapter):
    before = good_zip.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        pack(adapter, good_zip)
    assert good_zip.read_bytes() == before
    pack(adapter, good_zip, overwrite=True)  # explicitly asked


def test_pack_needs_both_files(adapter, tmp_path):
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        pack(adapter, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


# ----------------------------------------------------------------------------------------------- reject


def test_rejects_rank_33(good_zip, tmp_path):
    z = rezip(good_zip, tmp_path / "r33.zip", lambda c: c.update(r=33))
    with pytest.raises(VerifyError, match="rank 33"):
        verify(z, None, BASE)


def test_rejects_rank_33_in_rank_pattern(good_zip, tmp_path):
    z = rezip(good_zip, tmp_path / "rp.zip", lambda c: c.update(rank_pattern={"q_proj": 64}))
    with pytest.raises(VerifyError, match="rank 64"):
        verify(z, None, BASE)


@pytest.mark.parametrize("missing", REQUIRED)
def test_rejects_missing_file(good_zip, tmp_path, missing):
    z = rezip(good_zip, tmp_path / "missing.zip", drop=missing)
    with pytest.raises(VerifyError, match="missing") as e:
        verify(z, None, BASE)
    assert missing in str(e.value)


def test_rejects_files_in_a_subfolder(adapter, tmp_path):
    z = tmp_path / "nested.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in REQUIRED:
            zf.write(adapter / n, arcname=f"adapter/{n}")
    with pytest.raises(VerifyError, match="root"):
        verify(z, None, BASE)


def test_rejects_corrupt_payload(good_zip, tmp_path):
    data = bytearray(good_zip.read_bytes())
    with zipfile.ZipFile(good_zip) as zf:
        info = zf.getinfo("adapter_model.safetensors")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # local header is 30 bytes + name
    for k in range(start + 10, start + 20):
        data[k] ^= 0xFF
    bad = tmp_path / "flipped.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="corrupt|not a readable zip"):
        verify(bad, None, BASE)


def test_rejects_one_flipped_bit_via_crc(adapter, tmp_path):
    z = tmp_path / "stored.zip"  # uncompressed: a flipped bit decodes fine, only the CRC catches it
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        for n in REQUIRED:
            zf.write(adapter / n, arcname=n)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("adapter_model.safetensors")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 200] ^= 0x01
    z.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="CRC"):
        verify(z, None, BASE)


def test_rejects_truncated_zip(good_zip, tmp_path):
    bad = tmp_path / "cut.zip"
    bad.write_bytes(good_zip.read_bytes()[: good_zip.stat().st_size // 2])
    with pytest.raises(VerifyError, match="not a readable zip"):
        verify(bad, None, BASE)


def test_rejects_a_missing_zip(tmp_path):
    with pytest.raises(VerifyError, match="no such file"):
        verify(tmp_path / "nope.zip", None, BASE)


def test_rejects_invalid_json_config(good_zip, tmp_path):
    with zipfile.ZipFile(good_zip) as zf:
        weights = zf.read("adapter_model.safetensors")
    z = tmp_path / "badjson.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("adapter_config.json", "{not json")
        zf.writestr("adapter_model.safetensors", weights)
    with pytest.raises(VerifyError, match="not valid JSON"):
        verify(z, None, BASE)


def test_rejects_unreadable_weights(good_zip, tiny_model_dir, tmp_path):
    with zipfile.ZipFile(good_zip) as zf:
        cfg = zf.read("adapter_config.json")
    z = tmp_path / "badw.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("adapter_config.json", cfg)
        zf.writestr("adapter_model.safetensors", b"\x00" * 64)
    verify(z, None, BASE)  # the config alone is fine: the weights are read once a model is given
    with pytest.raises(VerifyError, match="adapter_model.safetensors: unreadable"):
        verify(z, tiny_model_dir, BASE)


@pytest.fixture(scope="module")
def narrow_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Same layer layout as the tiny model, hidden size 32 instead of 64 (config + random weights)."""
    import json as _json

    from transformers import AutoModelForCausalLM

    from fastnemo.tiny import tiny_config

    vocab = _json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    out = tmp_path_factory.mktemp("narrow") / "model"
    AutoModelForCausalLM.from_config(tiny_config(vocab, hidden_size=32)).save_pretrained(out)
    return out


def test_rejects_wrong_architecture(good_zip, narrow_model_dir):
    with pytest.raises(VerifyError, match="shape") as e:
        verify(good_zip, narrow_model_dir, BASE)
    assert str(narrow_model_dir) in str(e.value)


def test_rejects_adapter_of_a_different_model(narrow_model_dir, tiny_model_dir, tmp_path):
    """The converse: an adapter trained on the narrow model, checked against the real (tiny) one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    m = get_peft_model(AutoModelForCausalLM.from_pretrained(narrow_model_dir),
                       LoraConfig(r=4, target_modules=["q_proj", "in_proj"]))
    m.save_pretrained(tmp_path / "narrow-adapter")
    z = pack(tmp_path / "narrow-adapter", tmp_path / "n.zip")
    verify(z, narrow_model_dir, None)  # fine on its own model
    with pytest.raises(VerifyError, match="shape"):
        verify(z, tiny_model_dir, None)


def test_rejects_out_proj_target(good_zip, tmp_path):
    z = rezip(good_zip, tmp_path / "op.zip", lambda c: c.update(target_modules=[*c["target_modules"], "out_proj"]))
    with pytest.raises(VerifyError, match="out_proj"):
        verify(z, None, BASE)


def test_rejects_nonexistent_target(good_zip, tiny_model_dir, tmp_path):
    z = rezip(good_zip, tmp_path / "nx.zip", lambda c: c.update(target_modules=[*c["target_modules"], "gate_projj"]))
    with pytest.raises(VerifyError, match="gate_projj"):
        verify(z, tiny_model_dir, BASE)


def test_rejects_a_target_with_no_weights(good_zip, tiny_model_dir, tmp_path):
    """The config names fewer targets than the safetensors hold: the weights must match key for key."""
    z = rezip(good_zip, tmp_path / "extra.zip", lambda c: c.update(target_modules=["q_proj", "k_proj"]))
    with pytest.raises(VerifyError, match="unexpected"):
        verify(z, tiny_model_dir, BASE)


def test_rejects_wrong_base_model_name(good_zip, tmp_path):
    z = rezip(good_zip, tmp_path / "name.zip", lambda c: c.update(base_model_name_or_path="meta-llama/Llama-3-8B"))
    with pytest.raises(VerifyError, match="Llama-3-8B"):
        verify(z, None, BASE)
    verify(z, None, None)  # the check is skipped when no name is expected


def test_rejects_non_lora(good_zip, tmp_path):
    z = rezip(good_zip, tmp_path / "ia3.zip", lambda c: c.update(peft_type="IA3"))
    with pytest.raises(VerifyError, match="peft_type"):
        verify(z, None, BASE)


def test_rejects_nan_weights(tiny_session, tiny_model_dir, tmp_path):
    import torch

    with torch.no_grad():
        next(p for n, p in tiny_session.model.named_parameters() if "lora_A" in n).fill_(float("nan"))
    z = pack(tiny_session.save_adapter(tmp_path / "nan"), tmp_path / "nan.zip")
    with pytest.raises(VerifyError, match="NaN"):
        verify(z, tiny_model_dir, BASE)
