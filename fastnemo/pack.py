"""``submission.zip``: pack an adapter into exactly what the competition's vLLM loads, and verify a zip the
way vLLM will load it.

vLLM (0.17 to 0.33) applies a nemotron_h LoRA on q/k/v/o_proj, the Mamba in_proj/out_proj, the shared
expert's up/down_proj, the routed experts ONLY as per-expert 2-D keys
``...mixer.experts.{e}.up_proj|down_proj.lora_A|lora_B.weight``, lm_head and embed_tokens, under
``base_model.model.backbone.``. It ignores ``*.base_layer.weight``, the router and ``rank_pattern`` /
``alpha_pattern`` (one scale ``lora_alpha / r`` for all), and rejects DoRA, ``modules_to_save``, a bias, r > 32
and PEFT's stacked 3-D expert format. ``pack`` converts a PEFT adapter to that layout (unstacking the experts,
baking per-module scales into B, dropping full weights); ``verify`` refuses, naming the key and the reason,
every zip that would fail or be silently changed, and every zip entry other than the two adapter files.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import zipfile
import zlib
from pathlib import Path

from fastnemo.targets import EXPERT_PARAMETERS, MAX_LORA_RANK, MODULE, REFUSED, SERVABLE
from puzzles.files import InputError, atomic_open, sha256, write_atomic, write_json

REQUIRED = ("adapter_config.json", "adapter_model.safetensors")
PREFIX = "base_model.model."
KEY = re.compile(rf"{re.escape(PREFIX)}(?P<module>.+)\.(?:lora_A|lora_B)\.weight")
EMBED_KEY = re.compile(rf"{re.escape(PREFIX)}backbone\.embeddings\.lora_embedding_(?:A|B)")
# the order PEFT nests ParamWrappers on NemotronHExperts: the order the parameters are registered
EXPERT_ORDER = ("up_proj", "down_proj")


class VerifyError(InputError):
    """One failed check: the message names the key or file and what was expected."""


class PackError(InputError):
    """An adapter that cannot be converted into something vLLM serves unchanged."""


# -------------------------------------------------------------------------------------------------- pack


def _scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the module name's end."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _vllm_module(module: str) -> str:
    """transformers 5 names the backbone ``model``; vLLM (and the checkpoint) call it ``backbone``."""
    return "backbone." + module[len("model."):] if module.startswith("model.") else module


def to_vllm(config: dict, tensors: dict) -> tuple[dict, dict]:
    """A PEFT LoRA (config + tensors) as vLLM loads it: per-expert keys, one rank and one scale for all
    modules (per-module scales baked into B, lower ranks zero-padded: exact), no full weights."""
    import torch

    if config.get("peft_type") != "LORA":
        raise PackError(f"adapter_config.json: peft_type {config.get('peft_type')!r}: only LORA is served")
    for key, bad, why in (("use_dora", True, "vLLM fails to load DoRA"),
                          ("bias", lambda v: v not in (None, "none"), "vLLM rejects a LoRA bias"),
                          ("modules_to_save", lambda v: bool(v), "vLLM rejects modules_to_save")):
        v = config.get(key)
        if (bad(v) if callable(bad) else v == bad):
            raise PackError(f"adapter_config.json: {key} = {v!r}: {why}; retrain without it")
    r0, alpha0, rslora = config["r"], config.get("lora_alpha", config["r"]), bool(config.get("use_rslora"))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    targets_p = [t.split(".")[-1] for t in (config.get("target_parameters") or [])]
    nested = [p for p in EXPERT_ORDER if p in targets_p]  # innermost first

    factors: dict[str, dict[str, torch.Tensor]] = {}  # module -> {"A": ..., "B": ...}
    for key, t in tensors.items():
        m = re.fullmatch(rf"{re.escape(PREFIX)}(.+)\.lora_(A|B)\.weight", key)
        if m is None:
            if "lora_magnitude_vector" in key:
                raise PackError(f"{key}: DoRA magnitude: vLLM fails to load DoRA")
            if "lora_" in key:
                raise PackError(f"{key}: not a LoRA A/B weight vLLM reads")
            continue  # a full weight (base_layer, a saved embedding layer): vLLM ignores it, the zip drops it
        factors.setdefault(m.group(1), {})[m.group(2)] = t

    R = max([r0, *ranks.values()])
    if R > MAX_LORA_RANK:
        raise PackError(f"adapter_config.json: rank {R} exceeds vLLM's max_lora_rank {MAX_LORA_RANK}")
    target_scale = _scale(alpha0, R, False)
    out = {}
    for module, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            raise PackError(f"{module}: has lora_{''.join(ab)} only; both lora_A and lora_B are needed")
        path = module
        experts = re.fullmatch(r"(.+\.experts)((?:\.base_layer)*)", module)
        if experts:
            path = experts.group(1)
            depth = experts.group(2).count(".base_layer")
            if not nested:
                raise PackError(f"{module}: stacked expert LoRA but no experts in target_parameters")
            param = nested[len(nested) - 1 - depth]
        r = _pattern_value(ranks, path, r0)
        scale = _scale(_pattern_value(alphas, path, alpha0), r, rslora) / target_scale
        a, b = ab["A"], ab["B"]
        if experts:
            e = a.shape[0] // r
            if a.shape[0] != e * r or b.shape[1] != e * r:
                raise PackError(f"{module}: stacked shapes {tuple(a.shape)}, {tuple(b.shape)} are not E x r={r}")
            from fastnemo.lora import unstack

            pairs = [(f"{_vllm_module(path)}.{i}.{param}", ai, bi) for i, (ai, bi) in enumerate(unstack(a, b, e))]
        else:
            pairs = [(_vllm_module(path), a, b)]
        for name, ai, bi in pairs:
            bi = bi * scale if scale != 1 else bi
            if ai.shape[0] < R:  # zero rows of A / columns of B: the same product at rank R
                ai = torch.cat([ai, ai.new_zeros(R - ai.shape[0], ai.shape[1])])
                bi = torch.cat([bi, bi.new_zeros(bi.shape[0], R - bi.shape[1])], dim=1)
            out[f"{PREFIX}{name}.lora_A.weight"] = ai.contiguous()
            out[f"{PREFIX}{name}.lora_B.weight"] = bi.contiguous()
    if not out:
        raise PackError("adapter_model.safetensors: no LoRA weights")
    suffixes = sorted({_suffix(k) for k in out})
    cfg = dict(config)
    cfg.update(r=R, lora_alpha=alpha0,
               rank_pattern={}, alpha_pattern={}, target_parameters=None, target_modules=suffixes,
               use_rslora=False, use_dora=False, modules_to_save=None, bias="none")
    return cfg, out


def _suffix(key: str) -> str:
    module = KEY.fullmatch(key).group("module")
    return "lm_head" if module == "lm_head" else module.rsplit(".", 1)[-1]


def pack(adapter_dir: str | Path, out_zip: str | Path, overwrite: bool = False, stamp: bool = False) -> Path:
    """Convert the PEFT adapter in ``adapter_dir`` (:func:`to_vllm`) and zip its two files at the zip's
    root into ``out_zip``, atomically; ``stamp``: also write what it was packed from (:func:`reusable`)."""
    from safetensors.torch import load_file, save

    adapter_dir, out_zip = Path(adapter_dir), Path(out_zip)
    for name in REQUIRED:
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir}: {name} missing (expected a PEFT adapter folder)")
    if out_zip.exists() and not overwrite:
        raise FileExistsError(f"{out_zip} exists; refusing to overwrite it (pass --overwrite to replace it)")
    try:
        raw = parse_config((adapter_dir / REQUIRED[0]).read_bytes(), str(adapter_dir / REQUIRED[0]))
    except VerifyError as e:
        raise PackError(str(e)) from None
    try:
        tensors = load_file(adapter_dir / REQUIRED[1])
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
        raise PackError(f"{adapter_dir / REQUIRED[1]}: unreadable ({e})") from None
    try:
        config, tensors = to_vllm(raw, tensors)
    except (KeyError, TypeError) as e:  # a config field missing or of the wrong type
        raise PackError(f"{adapter_dir / REQUIRED[0]}: {type(e).__name__}: {e}") from None
    buf = io.BytesIO()
    # deflate level 1: bf16 LoRA weights compress ~1.25x at level 1 and level 6 alike, at 3.8 vs 8.2 s per
    # 100 MB (one core, measured). The full set's 1.8 GB is zipped by pack and by every harness eval: 81 s at
    # full size on the H100 lane, hidden behind vLLM's 230 s start (2026-12-07; 171 s in the way at level 6)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in ((REQUIRED[0], json.dumps(config, indent=2, sort_keys=True)),
                           (REQUIRED[1], save(tensors, metadata={"format": "pt"}))):
            zf.writestr(_entry(name), data, compresslevel=1)
    stamp_path(out_zip).unlink(missing_ok=True)  # a kill before the new stamp leaves none, never a stale one
    write_atomic(out_zip, buf.getvalue())
    if stamp:
        write_json(stamp_path(out_zip), source_stamp(adapter_dir))
    return out_zip


# ------------------------------------------------------------------------------- packed once, shipped as is
# The eval stage serves the harness the packed zip (fastnemo.harness.served_adapter); the pack stage ships the
# best-validated checkpoint. Pack is deterministic, so when that checkpoint's zip is already on disk the pack
# stage copies it: the shipped bytes are the validated bytes, and the 1.8 GB of the full set is not zipped
# twice. The harness zip's stamp (``<zip>.source.json``) says what it was packed from.


def source_stamp(adapter_dir: Path) -> dict:
    """sha256 of the adapter's two files and of the packer's code (this module and the targets it checks
    against): equal stamps, equal zip bytes."""
    here = Path(__file__).parent
    return {**{name: sha256(Path(adapter_dir) / name) for name in REQUIRED},
            **{f"fastnemo/{name}": sha256(here / name) for name in ("pack.py", "targets.py")}}


def stamp_path(zip_path: Path) -> Path:
    return Path(f"{zip_path}.source.json")


def reusable(adapter_dir: Path, candidates) -> Path | None:
    """The first of ``candidates`` packed from exactly this adapter by this packer, or None."""
    stamp = None
    for zip_path in candidates:
        try:
            theirs = json.loads(stamp_path(zip_path).read_text())
        except (OSError, ValueError):
            continue
        stamp = stamp or source_stamp(adapter_dir)
        if theirs == stamp and Path(zip_path).is_file():
            return Path(zip_path)
    return None


def copy_packed(src: Path, out_zip: Path) -> Path:
    """``src`` (a zip :func:`reusable` found) copied to ``out_zip``, atomically."""
    with open(src, "rb") as f, atomic_open(out_zip, "wb") as g:
        shutil.copyfileobj(f, g, 16 << 20)
    return Path(out_zip)


def _entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed timestamp and mode: the same adapter packs to the same bytes (hashes prove
    that two runs made the same submission)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
    return info


def to_peft(config: dict, tensors: dict) -> tuple[dict, dict]:
    """The inverse of :func:`to_vllm` for a packed adapter: stacked experts, transformers' ``model.`` names,
    so PEFT can load it (``verify --load``)."""
    from fastnemo.lora import restack

    out, experts = {}, {}
    for key, t in tensors.items():
        name = key.replace(f"{PREFIX}backbone.", f"{PREFIX}model.", 1)
        m = re.fullmatch(r"(.+\.experts)\.(\d+)\.(up_proj|down_proj)\.lora_(A|B)\.weight", name)
        if m:
            experts.setdefault((m.group(1), m.group(3)), {}).setdefault(int(m.group(2)), {})[m.group(4)] = t
        else:
            out[name] = t
    params = sorted({p for _, p in experts}, key=EXPERT_ORDER.index)
    for (path, param), per in experts.items():
        a, b = restack([(per[e]["A"], per[e]["B"]) for e in sorted(per)])
        depth = len(params) - 1 - params.index(param)
        out[f"{path}{'.base_layer' * depth}.lora_A.weight"] = a
        out[f"{path}{'.base_layer' * depth}.lora_B.weight"] = b
    cfg = dict(config)
    cfg["target_parameters"] = [p for p in EXPERT_PARAMETERS if p.split(".")[1] in params] or None
    shared = {k.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for k in out if "shared_experts" in k}
    # up_proj/down_proj named only for the routed experts: PEFT would put a LoRA the weights lack on the shared
    cfg["target_modules"] = [t for t in cfg["target_modules"] if t not in params or t in shared]
    return cfg, out


def peft_loadable(adapter_dir: Path, tmp: Path) -> Path:
    """``adapter_dir`` itself when PEFT can load it, else (a packed, vLLM-layout adapter: an unzipped
    submission) its :func:`to_peft` conversion written into ``tmp``."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(Path(adapter_dir) / REQUIRED[1]), "pt") as f:
        packed = any(k.startswith(PREFIX + "backbone.") for k in f.keys())  # noqa: SIM118 (not a dict)
    if not packed:
        return Path(adapter_dir)
    cfg, tensors = to_peft(json.loads((Path(adapter_dir) / REQUIRED[0]).read_text()),
                           load_file(str(Path(adapter_dir) / REQUIRED[1])))
    Path(tmp).mkdir(parents=True, exist_ok=True)
    (Path(tmp) / REQUIRED[0]).write_text(json.dumps(cfg))
    save_file(tensors, str(Path(tmp) / REQUIRED[1]))
    return Path(tmp)


# ------------------------------------------------------------------------------------------------ verify

# Bounds on what verify reads: a real adapter of the full module set at r = 32 is about 1.8 GB in bf16, and
# random bf16 weights hardly compress; a zip whose entries claim more, or compress like filler, is refused from
# its central directory, before anything is decompressed (a 2 MB zip can claim 2 GB).
MAX_WEIGHTS_BYTES = 4 << 30
MAX_CONFIG_BYTES = 1 << 20
MAX_RATIO = 50  # uncompressed / compressed for an entry over RATIO_FROM bytes (a trained adapter: ~1.1 to 3)
RATIO_FROM = 16 << 20
_LIMIT = {REQUIRED[0]: MAX_CONFIG_BYTES, REQUIRED[1]: MAX_WEIGHTS_BYTES}


def _check_entries(path: Path, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """The two adapter entries, by name, after every check the central directory allows (names, duplicates,
    encryption, compression method, declared sizes): nothing is decompressed yet."""
    names = [i.filename for i in infos]
    extra = [n for n in names if n not in REQUIRED]
    if extra:  # whoever unzips it gets these too (../ paths, filler, a nested copy)
        raise VerifyError(f"{path}: entry {extra[0]!r} is not one of the two adapter files at the zip's "
                          f"root {list(REQUIRED)}; the zip must hold nothing else")
    twice = [n for n in REQUIRED if names.count(n) > 1]
    if twice:
        raise VerifyError(f"{path}: a second {twice[0]} (the competition reads the first it finds)")
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise VerifyError(f"{path}: missing {missing} at the zip's root (has {sorted(names)})")
    for i in infos:
        where = f"{path}: {i.filename}"
        if i.flag_bits & 0x1:
            raise VerifyError(f"{where}: encrypted; the competition cannot read it (zip it without a password)")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise VerifyError(f"{where}: compression method {i.compress_type} is not stored or deflate "
                              "(repack with fastnemo pack)")
        if i.file_size > _LIMIT[i.filename]:
            raise VerifyError(f"{where}: {i.file_size:,} bytes uncompressed, over the {_LIMIT[i.filename]:,} "
                              "a rank-32 adapter can need")
        if i.file_size > RATIO_FROM and i.file_size > MAX_RATIO * max(i.compress_size, 1):
            raise VerifyError(f"{where}: {i.file_size:,} bytes packed into {i.compress_size:,} (ratio over "
                              f"{MAX_RATIO}): filler, not adapter weights")
    return {i.filename: i for i in infos}


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes, streamed and never past its declared size (zipfile checks the CRC at the end)."""
    chunks, left = [], info.file_size
    with zf.open(info) as f:
        while chunk := f.read(min(1 << 24, left + 1)):
            left -= len(chunk)
            if left < 0:
                raise VerifyError(f"{info.filename}: more bytes than its declared {info.file_size:,}")
            chunks.append(chunk)
    if left:
        raise VerifyError(f"{info.filename}: {left:,} bytes short of its declared size")
    return b"".join(chunks)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_config(raw: bytes, where: str) -> dict:
    """adapter_config.json as PEFT and vLLM read it: UTF-8 JSON (no BOM, no UTF-16), one object; NaN,
    Infinity, 5,000-digit numbers and absurd nesting are refused, each naming ``where``."""
    try:
        config = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise VerifyError(f"{where}: not UTF-8 ({e.reason} at byte {e.start}); PEFT and vLLM read UTF-8") from None
    except json.JSONDecodeError as e:
        raise VerifyError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # int digit limit, NaN/Infinity, nesting too deep
        raise VerifyError(f"{where}: not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(config, dict):
        raise VerifyError(f"{where}: expected a JSON object, got {type(config).__name__}")
    return config


def _read_zip(path: Path) -> tuple[dict, bytes]:
    if not path.is_file():
        raise VerifyError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = _check_entries(path, zf.infolist())
            raw = _read_entry(zf, infos[REQUIRED[0]])
            weights = _read_entry(zf, infos[REQUIRED[1]])
    except VerifyError as e:
        raise VerifyError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            raise VerifyError(f"{path}: corrupt zip ({e})") from None
        raise VerifyError(f"{path}: not a readable zip file ({e})") from None
    except (zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as e:
        # zlib: a corrupt deflate stream; RuntimeError / NotImplementedError: zipfile on encryption, methods
        raise VerifyError(f"{path}: not a readable zip file ({type(e).__name__}: {e})") from None
    return parse_config(raw, f"{path}: adapter_config.json"), weights


def extract_checked(zip_path: str | Path, into: str | Path) -> Path:
    """``verify`` the zip's entries and config (no model: the scorer checks the weights by loading them),
    then write exactly its two adapter files into ``into``; returns ``into``. Never ``extractall``: a name
    is written only after it is one of the two checked ones."""
    zip_path, into = Path(zip_path), Path(into)
    verify(zip_path, None, None)
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf:
        infos = _check_entries(zip_path, zf.infolist())
        for name in REQUIRED:
            (into / name).write_bytes(_read_entry(zf, infos[name]))
    return into


def _positive_int(config: dict, key: str, value, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerifyError(f"adapter_config.json: {key} = {value!r}: must be an integer (vLLM sizes tensors by it)")
    if not 1 <= value <= hi:
        raise VerifyError(f"adapter_config.json: {key} = {value}: rank {value} is outside 1..{hi} (the "
                          f"competition's max_lora_rank is {MAX_LORA_RANK})")
    return value


MAX_ALPHA = 1 << 16  # lora_alpha / r scales every update; past this it is a typo, not a recipe
# vLLM's PEFTHelper refuses an adapter with any of these set (lora_bias, aLoRA, layer_replication, QALoRA, BD-LoRA)
_VLLM_REFUSES = ("lora_bias", "alora_invocation_tokens", "layer_replication", "use_qalora", "use_bdlora")
# inits that leave the base weights as they are (vLLM's list); PiSSA, OLoRA, CorDA, LoftQ change them
_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


def check_config(config: dict, base_model_name: str | None) -> list[str]:
    """Checks on adapter_config.json alone, every field vLLM reads for type and range; returns the targets."""
    if not isinstance(config, dict):
        raise VerifyError(f"adapter_config.json: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise VerifyError(f"adapter_config.json: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    for key, why in (("rank_pattern", "vLLM ignores it (one r for all modules)"),
                     ("alpha_pattern", "vLLM ignores it (one scale lora_alpha / r for all modules)"),
                     ("target_parameters", "PEFT's stacked expert format: vLLM refuses it (pack unstacks it)"),
                     ("modules_to_save", "vLLM refuses modules_to_save"),
                     ("use_dora", "vLLM fails to load DoRA"),
                     ("use_rslora", "vLLM scales by lora_alpha / r, not / sqrt(r)"),
                     *((k, "vLLM refuses it") for k in _VLLM_REFUSES)):
        if config.get(key) not in (None, False, {}, [], 0, ""):
            raise VerifyError(f"adapter_config.json: {key} = {config[key]!r}: {why}; repack with fastnemo pack")
    if "r" not in config:
        raise VerifyError("adapter_config.json: no r (vLLM requires r, lora_alpha and target_modules)")
    r = _positive_int(config, "r", config["r"], MAX_LORA_RANK)
    if "lora_alpha" not in config:
        raise VerifyError("adapter_config.json: no lora_alpha (vLLM requires r, lora_alpha and target_modules)")
    alpha = config["lora_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0 < alpha <= MAX_ALPHA:
        raise VerifyError(f"adapter_config.json: lora_alpha = {alpha!r}: must be a number in (0, {MAX_ALPHA}] "
                          f"(vLLM scales every update by lora_alpha / r = {alpha!r} / {r})")
    init = config.get("init_lora_weights", True)
    if not (init is True or init is False or init is None or isinstance(init, str) and init.lower() in _INITS):
        raise VerifyError(f"adapter_config.json: init_lora_weights = {init!r}: an init that changes the base "
                          "weights (PiSSA, OLoRA, LoftQ): vLLM serves the unchanged base model")
    if config.get("bias", "none") not in ("none", None):
        raise VerifyError(f"adapter_config.json: bias = {config['bias']!r}: vLLM serves bias 'none' only")
    if base_model_name and config.get("base_model_name_or_path") != base_model_name:
        raise VerifyError(
            f"adapter_config.json: base_model_name_or_path is {config.get('base_model_name_or_path')!r}, "
            f"expected {base_model_name!r}"
        )
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise VerifyError(f"adapter_config.json: target_modules is a pattern {targets!r}; pack writes a list")
    if not isinstance(targets, list):
        raise VerifyError(f"adapter_config.json: target_modules = {targets!r}: expected a list of module names")
    if not targets:
        raise VerifyError("adapter_config.json: target_modules is empty")
    for t in targets:
        if not isinstance(t, str):
            raise VerifyError(f"adapter_config.json: target module {t!r} is not a module name (a string)")
        if t in REFUSED or t not in SERVABLE:
            raise VerifyError(f"adapter_config.json: target module {t!r} is not valid for nemotron_h in vLLM "
                              f"({REFUSED.get(t, f'served: {list(SERVABLE)}')})")
    return list(targets)


def _why_not_served(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return "a DoRA magnitude: vLLM fails to load DoRA"
    if ".base_layer." in key or not key.endswith(".weight") or "lora_" not in key:
        return "a base (non-LoRA) weight: vLLM ignores it"
    if re.search(r"\.experts\.lora_[AB]\.weight$", key) or ".experts.base_layer." in key:
        return "PEFT's stacked expert LoRA: vLLM refuses it (pack writes experts.{e}.up_proj|down_proj)"
    if ".mixer.gate." in key:
        return "a router LoRA: vLLM ignores mixer.gate"
    if ".mtp." in key:
        return "an MTP LoRA: vLLM ignores mtp.*"
    if not key.startswith(PREFIX + "backbone.") and not key.startswith(PREFIX + "lm_head."):
        return f"not under {PREFIX}backbone. (vLLM's names for nemotron_h)"
    return "an unknown module suffix for nemotron_h in vLLM"


def check_keys(config: dict, tensors: dict) -> None:
    """Every key is one vLLM applies, for a module in target_modules, at rank r; finite."""
    import torch

    targets = set(config["target_modules"])
    r = config["r"]
    for k, t in tensors.items():
        m = KEY.fullmatch(k)
        if (m is None or MODULE.fullmatch(m.group("module")) is None) and not EMBED_KEY.match(k):
            raise VerifyError(f"weight {k}: {_why_not_served(k)}")
        if m is not None:
            if _suffix(k) not in targets:
                raise VerifyError(f"weight {k}: unexpected: module {_suffix(k)!r} is not in target_modules "
                                  f"{sorted(targets)}")
            if t.dim() != 2 or (t.shape[0] if ".lora_A." in k else t.shape[-1]) != r:
                raise VerifyError(f"weight {k}: shape {tuple(t.shape)}: expected 2-D at rank r={r}")
        if not torch.isfinite(t.float()).all():
            raise VerifyError(f"weight {k}: contains NaN or inf")


def expected_shapes(model_path: Path, r: int) -> dict[str, tuple[str, tuple, tuple]]:
    """module key part -> (suffix, A shape, B shape) for every module vLLM can adapt in the model at
    ``model_path`` (built on the meta device: no memory, any model size)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    shapes = {}
    for name, module in model.named_modules():
        vname = _vllm_module(name)
        if isinstance(module, torch.nn.Linear) and MODULE.fullmatch(vname):
            shapes[vname] = ((r, module.in_features), (module.out_features, r))
        elif name.endswith("mixer.experts") and hasattr(module, "up_proj"):
            for param in EXPERT_ORDER:
                n_exp, out_f, in_f = getattr(module, param).shape
                for e in range(n_exp):
                    shapes[f"{vname}.{e}.{param}"] = ((r, in_f), (out_f, r))
    return shapes


def check_weights(config: dict, tensors: dict, model_path: Path, load: bool) -> dict:
    """The weights must be, key for key and shape for shape, a vLLM LoRA of the model at ``model_path``
    for the config's targets (every expert of every MoE layer when the experts are targeted). With ``load``
    the adapter is also loaded (restacked) into PEFT for real and run forward once."""
    shapes = expected_shapes(model_path, config["r"])
    suffix_of = {m: ("lm_head" if m == "lm_head" else m.rsplit(".", 1)[-1]) for m in shapes}
    unknown = [t for t in config["target_modules"] if t not in set(suffix_of.values())]
    if unknown:
        raise VerifyError(f"target modules {unknown} do not exist in the model at {model_path}")
    targets = set(config["target_modules"])
    present = {KEY.fullmatch(k).group("module") for k in tensors if KEY.fullmatch(k)}

    def group(m):  # the routed experts and the other modules of one suffix are adapted (or not) as wholes
        return suffix_of[m], ".experts." in m

    groups = {group(m) for m in present if m in shapes}
    expected = {m for m in shapes if group(m) in groups}
    missing, extra = sorted(expected - present), sorted(present - set(shapes))
    missing += sorted(f"any {t}" for t in targets if t not in {g[0] for g in groups})
    if missing or extra:
        raise VerifyError(
            f"weights do not match a LoRA of the model at {model_path}: {len(missing)} modules missing "
            f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})"
        )
    for k, t in tensors.items():
        m = KEY.fullmatch(k)
        if m is None:
            continue
        want = shapes[m.group("module")][0 if ".lora_A." in k else 1]
        if tuple(t.shape) != want:
            raise VerifyError(f"weight {k}: shape {tuple(t.shape)}, expected {want} for the model at {model_path}")
    if load:
        _load_and_run(config, tensors, model_path)
    return {"tensors": len(tensors), "params": sum(t.numel() for t in tensors.values())}


def _load_and_run(config: dict, tensors: dict, model_path: Path) -> None:
    import tempfile

    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from fastnemo.patches.peft import allow_out_proj

    cfg, stacked = to_peft(config, tensors)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "adapter_config.json").write_text(json.dumps(cfg))
        save_file(stacked, str(Path(tmp, "adapter_model.safetensors")))
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        with allow_out_proj():
            model = PeftModel.from_pretrained(base, tmp)
        loaded = {k for k, _ in model.named_parameters() if "lora_" in k}
        if len(loaded) != len(stacked):
            raise VerifyError(f"PEFT built {len(loaded)} LoRA tensors from the adapter, which holds {len(stacked)}")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
        if not torch.isfinite(logits).all():
            raise VerifyError("the adapter loads, but the model's logits with it are not finite")


def verify(zip_path: str | Path, model_path: str | Path | None, base_model_name: str | None,
           load: bool = False) -> dict:
    """All checks on a submission zip; raises VerifyError naming the first that fails."""
    from safetensors.torch import load as load_safetensors

    zip_path = Path(zip_path)
    config, weights = _read_zip(zip_path)
    targets = check_config(config, base_model_name)
    try:
        tensors = load_safetensors(weights)
    except Exception as e:  # safetensors raises its own error types
        raise VerifyError(f"adapter_model.safetensors: unreadable ({e})") from e
    check_keys(config, tensors)
    report = {"rank": config.get("r"), "alpha": config.get("lora_alpha"), "target_modules": sorted(targets),
              "base_model_name_or_path": config.get("base_model_name_or_path"), "bytes": zip_path.stat().st_size,
              "experts": len({k.split(".lora_")[0] for k in tensors if re.search(r"\.experts\.\d+\.", k)})}
    if model_path is not None:
        report.update(check_weights(config, tensors, Path(model_path), load))
    return report
