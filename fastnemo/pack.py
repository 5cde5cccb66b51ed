"""``submission.zip``: pack an adapter, and verify one the way the competition will load it.

The competition loads ``adapter_config.json`` + ``adapter_model.safetensors`` onto Nemotron-3-Nano with
vLLM (max_lora_rank 32). ``verify`` re-opens the zip and checks everything that would make that fail, so
a bad submission is caught here rather than after an upload.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

from fastnemo.config import MAX_LORA_RANK
from fastnemo.files import write_atomic

REQUIRED = ("adapter_config.json", "adapter_model.safetensors")
# PEFT refuses these on Mamba layers (transformers' fused kernel bypasses them); vLLM cannot apply them.
INCOMPATIBLE = {"conv1d", "out_proj"}


class VerifyError(Exception):
    """One failed check: the message names it and what was expected."""


def pack(adapter_dir: str | Path, out_zip: str | Path, overwrite: bool = False) -> Path:
    """Zip the two adapter files (at the zip's root) into ``out_zip``, atomically."""
    adapter_dir, out_zip = Path(adapter_dir), Path(out_zip)
    for name in REQUIRED:
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir}: {name} missing (expected a PEFT adapter folder)")
    if out_zip.exists() and not overwrite:
        raise FileExistsError(f"{out_zip} exists; refusing to overwrite it (pass overwrite to replace)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in REQUIRED:
            zf.write(adapter_dir / name, arcname=name)
    return write_atomic(out_zip, buf.getvalue())


def _read_zip(path: Path) -> tuple[dict, bytes]:
    if not path.is_file():
        raise VerifyError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise VerifyError(f"{path}: corrupt zip (CRC mismatch in {bad})")
            names = set(zf.namelist())
            missing = [n for n in REQUIRED if n not in names]
            if missing:
                raise VerifyError(f"{path}: missing {missing} at the zip's root (has {sorted(names)})")
            config = json.loads(zf.read("adapter_config.json"))
            weights = zf.read("adapter_model.safetensors")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # zlib: a corrupt deflate stream
        raise VerifyError(f"{path}: not a readable zip file ({e})") from e
    except json.JSONDecodeError as e:
        raise VerifyError(f"{path}: adapter_config.json is not valid JSON ({e})") from e
    return config, weights


def check_config(config: dict, base_model_name: str | None) -> list[str]:
    """Checks on adapter_config.json alone; returns the target modules."""
    if config.get("peft_type") != "LORA":
        raise VerifyError(f"adapter_config.json: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > MAX_LORA_RANK:
        raise VerifyError(f"adapter_config.json: rank {max(ranks)} exceeds the competition's max {MAX_LORA_RANK}")
    if base_model_name and config.get("base_model_name_or_path") != base_model_name:
        raise VerifyError(
            f"adapter_config.json: base_model_name_or_path is {config.get('base_model_name_or_path')!r}, "
            f"expected {base_model_name!r}"
        )
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise VerifyError("adapter_config.json: target_modules is empty")
    bad = sorted(set(targets) & INCOMPATIBLE)
    if bad:
        raise VerifyError(f"adapter_config.json: target modules {bad} are not valid for nemotron_h (Mamba)")
    return targets


def check_weights(config: dict, weights: bytes, model_path: Path, load: bool) -> dict:
    """The weights must match, key for key and shape for shape, the LoRA that PEFT builds for this adapter
    config on the model at ``model_path`` (built on the meta device: no memory, any model size). With
    ``load`` the adapter is also loaded for real and run forward once."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load as load_safetensors
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        tensors = load_safetensors(weights)
    except Exception as e:  # safetensors raises its own error types
        raise VerifyError(f"adapter_model.safetensors: unreadable ({e})") from e
    model_config = AutoConfig.from_pretrained(model_path)
    fields = LoraConfig.__dataclass_fields__.keys() - {"base_model_name_or_path"}  # checked in check_config
    peft_config = LoraConfig(**{k: v for k, v in config.items() if k in fields})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    leaf = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    names = peft_config.target_modules
    # a string is a regex for PEFT (matched on full module names): PEFT itself reports one that matches nothing
    unknown = [] if isinstance(names, str) else [t for t in names if t not in leaf]
    if unknown:
        raise VerifyError(f"target modules {unknown} do not exist in {model_config.model_type} at {model_path}")
    try:
        expected = get_peft_model_state_dict(get_peft_model(model, peft_config))
    except ValueError as e:
        raise VerifyError(f"PEFT rejects this adapter config on {model_config.model_type}: {e}") from e
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise VerifyError(
            f"weights do not match a {model_config.model_type} LoRA from {model_path}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})"
        )
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise VerifyError(f"weight {k}: shape {tuple(t.shape)}, expected {tuple(expected[k].shape)} "
                              f"for the architecture at {model_path}")
        if not torch.isfinite(t.float()).all():
            raise VerifyError(f"weight {k}: contains NaN or inf")
    if load:
        _load_and_run(config, weights, model_path)
    return {"tensors": len(tensors), "params": sum(t.numel() for t in tensors.values())}


def _load_and_run(config: dict, weights: bytes, model_path: Path) -> None:
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "adapter_config.json").write_text(json.dumps(config))
        Path(tmp, "adapter_model.safetensors").write_bytes(weights)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, tmp)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
        if not torch.isfinite(logits).all():
            raise VerifyError("the adapter loads, but the model's logits with it are not finite")


def verify(zip_path: str | Path, model_path: str | Path | None, base_model_name: str | None,
           load: bool = False) -> dict:
    """All checks on a submission zip; raises VerifyError naming the first that fails."""
    zip_path = Path(zip_path)
    config, weights = _read_zip(zip_path)
    targets = check_config(config, base_model_name)
    report = {"rank": config.get("r"), "alpha": config.get("lora_alpha"), "target_modules": sorted(targets),
              "base_model_name_or_path": config.get("base_model_name_or_path"), "bytes": zip_path.stat().st_size}
    if model_path is not None:
        report.update(check_weights(config, weights, Path(model_path), load))
    return report
