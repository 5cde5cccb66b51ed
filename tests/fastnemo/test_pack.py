"""pack / verify on real adapters of the tiny nemotron_h model: a good zip passes (also loaded for real), each
way a submission can be broken is caught and named, and a plain-PEFT adapter (no fastnemo) is accepted."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from fastnemo.config import ModelConfig
from fastnemo.pack import REQUIRED, VerifyError, pack, verify
from fastnemo.targets import DEFAULT_TARGETS

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
    from safetensors.torch import load, load_file

    with zipfile.ZipFile(good_zip) as zf:
        assert sorted(zf.namelist()) == sorted(REQUIRED)  # at the root, nothing else
        packed = load(zf.read("adapter_model.safetensors"))
    source = load_file(adapter / "adapter_model.safetensors")
    renamed = {k.replace("base_model.model.model.", "base_model.model.backbone."): v for k, v in source.items()}
    assert packed.keys() == renamed.keys()
    assert all(k.startswith(("base_model.model.backbone.", "base_model.model.lm_head.lora_")) for k in packed)
    assert all(torch.equal(packed[k], renamed[k]) for k in packed)  # one rank, one scale: unchanged values
    assert not list(good_zip.parent.glob(".submission.zip.*"))  # no temp file left


def test_verify_accepts_a_fastnemo_adapter(good_zip, tiny_model_dir):
    report = verify(good_zip, tiny_model_dir, BASE)
    assert report["rank"] == 4 and report["alpha"] == 8
    assert report["base_model_name_or_path"] == BASE
    assert set(report["target_modules"]) == set(DEFAULT_TARGETS)  # out_proj and lm_head included
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
    with pytest.raises(VerifyError, match="rank_pattern"):
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
    for model in (None, tiny_model_dir):
        with pytest.raises(VerifyError, match="adapter_model.safetensors: unreadable"):
            verify(z, model, BASE)


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


def test_rejects_conv1d_target(good_zip, tmp_path):
    z = rezip(good_zip, tmp_path / "op.zip", lambda c: c.update(target_modules=[*c["target_modules"], "conv1d"]))
    with pytest.raises(VerifyError, match="conv1d"):
        verify(z, None, BASE)


def test_rejects_a_target_without_weights(good_zip, tiny_model_dir, tmp_path):
    def drop_out_proj(t):
        for k in [k for k in t if ".out_proj." in k]:
            del t[k]

    z = rewrite(good_zip, tmp_path / "op.zip", tensors_edit=drop_out_proj)
    with pytest.raises(VerifyError, match="missing") as e:
        verify(z, tiny_model_dir, BASE)
    assert "out_proj" in str(e.value)


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


# ------------------------------------------------------------------------------- vLLM's layout (issue 12)

EXPERT_KEY = "base_model.model.backbone.layers.{l}.mixer.experts.{e}.{p}.lora_{ab}.weight"


@pytest.fixture()
def full_adapter(tiny_model_dir, tmp_path) -> Path:
    """The winners' target set on the tiny model (routed experts, out_proj and lm_head included), with
    random non-zero B so that every layout mistake changes the numbers."""
    from fastnemo.config import GenerationConfig, LoraConfig
    from fastnemo.session import ModelSession
    from fastnemo.targets import FULL_TARGETS

    s = ModelSession.load(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), dtype="float32"),
                          LoraConfig(rank=4, alpha=8, target_modules=list(FULL_TARGETS), train_experts=True),
                          GenerationConfig(engine="hf"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    return s.save_adapter(tmp_path / "full")


def packed_tensors(z: Path) -> tuple[dict, dict]:
    from safetensors.torch import load

    with zipfile.ZipFile(z) as zf:
        return json.loads(zf.read("adapter_config.json")), load(zf.read("adapter_model.safetensors"))


def test_full_target_set_packs_per_expert_and_verifies(full_adapter, tiny_model_dir, tmp_path):
    z = pack(full_adapter, tmp_path / "full.zip")
    cfg, tensors = packed_tensors(z)
    assert not cfg["target_parameters"] and not cfg["rank_pattern"] and not cfg["alpha_pattern"]
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj", "up_proj",
                                          "down_proj", "lm_head"}
    assert all(k.startswith(("base_model.model.backbone.", "base_model.model.lm_head.")) for k in tensors)
    assert not any("base_layer" in k or k.endswith("lm_head.weight") for k in tensors)
    for layer in (1, 3):  # every expert of every MoE layer, both projections, 2-D at rank 4
        for e in range(4):
            for p, a_shape, b_shape in (("up_proj", (4, 64), (64, 4)), ("down_proj", (4, 64), (64, 4))):
                assert tensors[EXPERT_KEY.format(l=layer, e=e, p=p, ab="A")].shape == a_shape
                assert tensors[EXPERT_KEY.format(l=layer, e=e, p=p, ab="B")].shape == b_shape
    report = verify(z, tiny_model_dir, BASE, load=True)  # loaded back (restacked) into PEFT and run
    assert report["experts"] == 2 * 4 * 2 and report["tensors"] == len(tensors)


def test_unstacked_experts_applied_per_expert_equal_the_stacked_adapter(full_adapter, tiny_model_dir, tmp_path):
    """What vLLM computes from the packed per-expert keys (each token through its routed experts, x W_e^T +
    s (x A_e^T) B_e^T) equals PEFT's stacked ParamWrapper on the same inputs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fastnemo.patches.peft import allow_out_proj

    cfg, tensors = packed_tensors(pack(full_adapter, tmp_path / "full.zip"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with allow_out_proj():
        stacked = PeftModel.from_pretrained(base, full_adapter)  # PEFT's own (fold W + dW) forward
    experts = stacked.get_base_model().model.layers[3].mixer.experts
    w = experts.base_layer.base_layer
    s = cfg["lora_alpha"] / cfg["r"]
    x = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    top_k = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i))[:2] for i in range(10)])
    weights = torch.rand(10, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = experts(x, top_k, weights)
        got = torch.zeros_like(want)
        for t in range(10):
            for j in range(2):
                e = int(top_k[t, j])

                def lin(v, p, e=e):
                    a, b = (tensors[EXPERT_KEY.format(l=3, e=e, p=p, ab=ab)] for ab in "AB")
                    return v @ getattr(w, p)[e].T + s * (v @ a.T) @ b.T

                got[t] += weights[t, j] * lin(w.act_fn(lin(x[t], "up_proj")), "down_proj")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pack_bakes_rank_and_alpha_patterns_exactly(tiny_model_dir, tmp_path):
    """vLLM reads one r and one alpha: pack pads lower ranks with zeros and folds each module's scale into B,
    so every module's delta weight is PEFT's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    m = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "in_proj"],
                                  rank_pattern={"q_proj": 4}, alpha_pattern={"in_proj": 64}))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
    m.save_pretrained(tmp_path / "pat")
    z = pack(tmp_path / "pat", tmp_path / "pat.zip")
    cfg, tensors = packed_tensors(z)
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and not cfg["rank_pattern"] and not cfg["alpha_pattern"]
    layers = m.get_base_model().model.layers
    for key, module in (("layers.2.mixer.q_proj", layers[2].mixer.q_proj),
                        ("layers.0.mixer.in_proj", layers[0].mixer.in_proj)):
        a = tensors[f"base_model.model.backbone.{key}.lora_A.weight"]
        b = tensors[f"base_model.model.backbone.{key}.lora_B.weight"]
        torch.testing.assert_close(b @ a * (16 / 8), module.get_delta_weight("default"), rtol=1e-5, atol=1e-6)
    verify(z, tiny_model_dir, None, load=True)


@pytest.mark.parametrize(("peft_kwargs", "needle"), [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["norm_f"]}, "modules_to_save"),
    ({"bias": "lora_only"}, "bias"),
])
def test_pack_refuses_what_vllm_rejects(tiny_model_dir, tmp_path, peft_kwargs, needle):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fastnemo.pack import PackError

    m = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       LoraConfig(r=4, target_modules=["q_proj"], **peft_kwargs))
    m.save_pretrained(tmp_path / "bad")
    with pytest.raises(PackError, match=needle):
        pack(tmp_path / "bad", tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists()


def rewrite(src: Path, dst: Path, tensors_edit=None, extra: dict | None = None, config_edit=None) -> Path:
    """A copy of zip ``src`` with its tensors edited, its config edited and/or extra raw entries added."""
    from safetensors.torch import save

    cfg, tensors = packed_tensors(src)
    if tensors_edit:
        tensors_edit(tensors)
    if config_edit:
        config_edit(cfg)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("adapter_config.json", json.dumps(cfg))
        zf.writestr("adapter_model.safetensors", save(tensors))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return dst


def _add(key, shape):
    return lambda t: t.update({key: torch.zeros(shape)})


@pytest.mark.parametrize(("edit", "needle"), [
    (_add("base_model.model.backbone.layers.2.mixer.q_proj.base_layer.weight", (128, 64)), "base"),
    (_add("base_model.model.backbone.layers.1.mixer.gate.lora_A.weight", (4, 64)), "router"),
    (_add("base_model.model.backbone.layers.1.mixer.experts.lora_A.weight", (16, 64)), "stacked"),
    (_add("base_model.model.backbone.layers.2.mixer.q_proj.lora_magnitude_vector", (128,)), "DoRA"),
    (_add("base_model.model.backbone.layers.2.mixer.qq_proj.lora_A.weight", (4, 64)), "unknown module suffix"),
    (_add("base_model.model.model.layers.2.mixer.q_proj.lora_A.weight", (4, 64)), "backbone"),
    (_add("base_model.model.mtp.layers.0.q_proj.lora_A.weight", (4, 64)), "MTP"),
])
def test_verify_names_each_key_vllm_would_reject_or_ignore(good_zip, tmp_path, edit, needle):
    z = rewrite(good_zip, tmp_path / "k.zip", tensors_edit=edit)
    with pytest.raises(VerifyError, match=needle):
        verify(z, None, BASE)


def test_verify_names_a_wrong_rank_key(good_zip, tmp_path):
    def widen(t):
        k = next(k for k in t if k.endswith("q_proj.lora_A.weight"))
        t[k] = torch.zeros(8, t[k].shape[1])

    with pytest.raises(VerifyError, match="rank r=4"):
        verify(rewrite(good_zip, tmp_path / "w.zip", tensors_edit=widen), None, BASE)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda c: c.update(rank_pattern={"q_proj": 2}), "rank_pattern"),
    (lambda c: c.update(alpha_pattern={"q_proj": 2}), "alpha_pattern"),
    (lambda c: c.update(use_dora=True), "DoRA"),
    (lambda c: c.update(modules_to_save=["lm_head"]), "modules_to_save"),
    (lambda c: c.update(bias="all"), "bias"),
    (lambda c: c.update(target_parameters=["experts.up_proj"]), "stacked"),
    (lambda c: c.update(use_rslora=True), "sqrt"),
    (lambda c: c.update(target_modules=".*proj"), "pattern"),
    (lambda c: c.update(target_modules=[*c["target_modules"], "gate"]), "router"),
])
def test_verify_names_each_config_vllm_would_reject_or_ignore(good_zip, tmp_path, edit, needle):
    with pytest.raises(VerifyError, match=needle):
        verify(rewrite(good_zip, tmp_path / "c.zip", config_edit=edit), None, BASE)


@pytest.mark.parametrize("extra", [
    {"../../evil.sh": b"#!/bin/sh\nrm -rf ~\n"},
    {"filler.bin": b"\0" * (1 << 20)},
    {"adapter/adapter_config.json": b"{}"},
    {"notes/": b""},
])
def test_verify_refuses_any_other_zip_entry(good_zip, tmp_path, extra):
    z = rewrite(good_zip, tmp_path / "x.zip", extra=extra)
    with pytest.raises(VerifyError, match="nothing else") as e:
        verify(z, None, BASE)
    assert next(iter(extra)) in str(e.value)


def test_verify_refuses_a_second_adapter_config(good_zip, tmp_path):
    import warnings

    z = rewrite(good_zip, tmp_path / "two.zip")
    with warnings.catch_warnings(), zipfile.ZipFile(z, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        zf.writestr("adapter_config.json", "{}")
    with pytest.raises(VerifyError, match="second adapter_config.json"):
        verify(z, None, BASE)


def test_verify_refuses_a_stacked_expert_zip(tiny_model_dir, tmp_path):
    """PEFT's own save (target_parameters, stacked 3-D experts) zipped as-is: vLLM refuses it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fastnemo.targets import EXPERT_PARAMETERS

    m = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       LoraConfig(r=4, target_modules=["q_proj"], target_parameters=list(EXPERT_PARAMETERS)))
    m.save_pretrained(tmp_path / "st")
    z = tmp_path / "st.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in REQUIRED:
            zf.write(tmp_path / "st" / n, arcname=n)
    with pytest.raises(VerifyError, match="stacked"):
        verify(z, None, None)
    verify(pack(tmp_path / "st", tmp_path / "packed.zip"), tiny_model_dir, None, load=True)  # pack fixes it


# ------------------------------------------------------------------- malformed zips: one line, never a traceback
# Config checks come before the weights are read, so these zips carry placeholder weights and need no model.

GOOD_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
               "base_model_name_or_path": BASE, "bias": "none"}


def raw_zip(path: Path, config: bytes | dict, weights: bytes = b"\0" * 64, **extra: bytes) -> Path:
    cfg = config if isinstance(config, bytes) else json.dumps(config).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", cfg)
        zf.writestr("adapter_model.safetensors", weights)
        for name, data in extra.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(("edit", "needle"), [
    ({"lora_alpha": "sixteen"}, "lora_alpha"),
    ({"lora_alpha": 1e308}, "lora_alpha"),
    ({"lora_alpha": -8}, "lora_alpha"),
    ({"lora_alpha": True}, "lora_alpha"),
    ({"r": 8.0}, "integer"),
    ({"r": "8"}, "integer"),
    ({"r": 0}, "outside 1..32"),
    ({"rank_pattern": ["q_proj", 64]}, "rank_pattern"),
    ({"alpha_pattern": "q_proj"}, "alpha_pattern"),
    ({"target_modules": [["q_proj"]]}, "not a module name"),
    ({"target_modules": {"q_proj": 1}}, "list of module names"),
    ({"lora_bias": True}, "lora_bias"),
    ({"layer_replication": [[0, 2]]}, "layer_replication"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights"),
])
def test_verify_checks_every_field_vllm_reads_for_type_and_range(tmp_path, edit, needle):
    with pytest.raises(VerifyError, match=needle):
        verify(raw_zip(tmp_path / "f.zip", {**GOOD_CONFIG, **edit}), None, BASE)


def test_verify_refuses_a_missing_lora_alpha(tmp_path):
    cfg = {k: v for k, v in GOOD_CONFIG.items() if k != "lora_alpha"}
    with pytest.raises(VerifyError, match="no lora_alpha"):
        verify(raw_zip(tmp_path / "f.zip", cfg), None, BASE)


@pytest.mark.parametrize(("raw", "needle"), [
    (json.dumps(GOOD_CONFIG).replace('"lora_alpha": 8', '"lora_alpha": NaN').encode(), "NaN"),
    (json.dumps(GOOD_CONFIG).encode("utf-16"), "not UTF-8"),
    (b"\xef\xbb\xbf" + json.dumps(GOOD_CONFIG).encode(), "not valid JSON"),
    (b"[]", "expected a JSON object, got list"),
    (json.dumps(GOOD_CONFIG).replace('"r": 4', '"r": ' + "9" * 5000).encode(), "not valid JSON"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "not valid JSON"),
])
def test_verify_names_an_unreadable_config_in_one_line(tmp_path, raw, needle):
    z = raw_zip(tmp_path / "c.zip", raw)
    with pytest.raises(VerifyError, match=needle) as e:
        verify(z, None, BASE)
    assert str(z) in str(e.value) and "adapter_config.json" in str(e.value) and "\n" not in str(e.value)


def _patch_headers(path: Path, *, local_offset: int, central_offset: int, value: bytes) -> None:
    """Overwrite a field of every local and central-directory header (the zip is otherwise intact)."""
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        i = data.find(sig)
        while i >= 0:
            data[i + off:i + off + len(value)] = value
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("offsets", "value", "needle"), [
    ((6, 8), b"\x01\x00", "encrypted"),          # general purpose flag bit 0
    ((8, 10), b"\x09\x00", "compression method 9"),  # deflate64
])
def test_verify_refuses_encrypted_and_deflate64_entries(tmp_path, offsets, value, needle):
    z = raw_zip(tmp_path / "e.zip", GOOD_CONFIG)
    _patch_headers(z, local_offset=offsets[0], central_offset=offsets[1], value=value)
    with pytest.raises(VerifyError, match=needle):
        verify(z, None, BASE)


def test_verify_refuses_filler_before_decompressing_it(tmp_path):
    """17 MiB of zeros deflate to a few KB: refused from the central directory's sizes alone."""
    z = raw_zip(tmp_path / "bomb.zip", GOOD_CONFIG, weights=b"\0" * (17 << 20))
    assert z.stat().st_size < 100_000
    with pytest.raises(VerifyError, match="filler"):
        verify(z, None, BASE)


def test_verify_caps_the_declared_size(tmp_path, monkeypatch):
    import fastnemo.pack as pack_mod

    monkeypatch.setitem(pack_mod._LIMIT, "adapter_model.safetensors", 1000)
    with pytest.raises(VerifyError, match="bytes uncompressed, over"):
        verify(raw_zip(tmp_path / "big.zip", GOOD_CONFIG, weights=b"\1" * 2000), None, BASE)


def test_score_extracts_only_the_two_checked_entries(tmp_path):
    """The scorer's unzip verifies first: a duplicate or an extra entry (a second adapter folder the glob could
    pick) is refused before anything is written, and a good zip gives exactly the two files."""
    import warnings

    import click

    from fastnemo.pack import extract_checked
    from fastnemo.score import adapter_dir

    two = raw_zip(tmp_path / "two.zip", GOOD_CONFIG, **{"a/adapter_config.json": b"{}"})
    with pytest.raises(click.UsageError, match="nothing else"):
        adapter_dir(two, tmp_path / "out1")
    assert not (tmp_path / "out1" / "a").exists()
    dup = raw_zip(tmp_path / "dup.zip", GOOD_CONFIG)
    with warnings.catch_warnings(), zipfile.ZipFile(dup, "a") as zf:
        warnings.simplefilter("ignore")
        zf.writestr("adapter_config.json", json.dumps({**GOOD_CONFIG, "r": 32}))
    with pytest.raises(VerifyError, match="second adapter_config.json"):
        extract_checked(dup, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_score_unzips_a_good_submission_to_exactly_its_two_files(good_zip, tmp_path):
    from fastnemo.score import adapter_dir

    found = adapter_dir(good_zip, tmp_path / "unzipped")
    assert sorted(p.name for p in found.iterdir()) == sorted(REQUIRED)
    with zipfile.ZipFile(good_zip) as zf:
        assert all((found / n).read_bytes() == zf.read(n) for n in REQUIRED)


def test_pack_writes_the_same_bytes_twice(adapter, tmp_path):
    """Fixed timestamps and sorted lists: packing the same adapter a second later gives the same zip."""
    import time

    a = pack(adapter, tmp_path / "a.zip")
    time.sleep(2.1)  # zip timestamps have 2 s resolution
    b = pack(adapter, tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    assert json.loads((adapter / "adapter_config.json").read_text())["target_modules"] == sorted(
        json.loads((adapter / "adapter_config.json").read_text())["target_modules"])


@pytest.mark.parametrize(("config", "weights", "needle"), [
    (b"{not json", None, "adapter_config.json: not valid JSON"),
    (json.dumps(GOOD_CONFIG).encode("utf-16"), None, "adapter_config.json: not UTF-8"),
    (None, b"\0" * 10, "adapter_model.safetensors: unreadable"),
])
def test_pack_names_an_unreadable_adapter_file(adapter, tmp_path, config, weights, needle):
    from fastnemo.pack import PackError

    if config is not None:
        (adapter / "adapter_config.json").write_bytes(config)
    if weights is not None:
        (adapter / "adapter_model.safetensors").write_bytes(weights)
    with pytest.raises(PackError, match=needle):
        pack(adapter, tmp_path / "s.zip")
