"""The patches of other libraries' private code (fastnemo/patches/): each module refuses another version of
its library, and every private function a patch replaces or leans on is pinned here by a hash of its source,
so an upgrade that changes one fails here, naming it, before a run mis-trains."""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

from fastnemo.patches import require, wrap_once

# sha256 (first 16 hex digits) of inspect.getsource of each RELIES_ON entry, at the version each module names
PINNED = {
    "fastnemo.patches.bitsandbytes": {
        "bitsandbytes.optim.optimizer.GlobalOptimManager.initialize": "a4883cab637d39e7",
        "bitsandbytes.optim.optimizer.GlobalOptimManager.register_module_override": "89c83dd880ef916e",
    },
    "fastnemo.patches.peft": {
        "peft.tuners.tuners_utils._check_lora_target_modules_mamba": "7e9cd0529e8d9567",
        "peft.tuners.lora.layer.ParamWrapper.forward": "704fb56e52604110",
        "peft.tuners.lora.layer.ParamWrapper.get_delta_factors": "821452c621a3c41a",
    },
    "fastnemo.patches.trl": {
        "trl.trainer.utils.add_fused_lm_head": "2722842b5d139e76",
        "trl.trainer.sft_trainer.SFTTrainer.__init__": "b6d569637dd82452",
        "trl.trainer.grpo_trainer.GRPOTrainer.__init__": "0b0009b3fd83b284",
    },
    "fastnemo.patches.transformers": {
        "transformers.models.nemotron_h.modeling_nemotron_h.mamba2_split_conv1d_scan_combined": "032602e1a9a89740",
        "transformers.models.nemotron_h.modeling_nemotron_h.NemotronHMamba2Mixer.forward": "4c1413f8c1a70c66",
        "transformers.integrations.moe._grouped_linear": "027b89afcacd28ae",
    },
}


def resolve(dotted: str):
    """The object a dotted name names: the longest importable module prefix, then attributes. A name a patch
    has already replaced in this process (``fastnemo_wrapped``) gives the library's original."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return getattr(obj, "fastnemo_original", obj)
    raise ImportError(dotted)


def source_hash(dotted: str) -> str:
    return hashlib.sha256(inspect.getsource(resolve(dotted)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("module", sorted(PINNED))
def test_every_private_function_a_patch_relies_on_is_unchanged(module):
    patches = importlib.import_module(module)  # the version guard passes: the pinned version is installed
    assert set(patches.RELIES_ON) == set(PINNED[module]), f"{module}.RELIES_ON and the pins here differ"
    changed = [name for name in patches.RELIES_ON if source_hash(name) != PINNED[module][name]]
    assert not changed, (
        f"{module} was written against {patches.WRITTEN_AGAINST}; the source of {changed} has changed since. "
        f"Re-check each patch in {module} against the new code (its docstring says what it relies on), then "
        "update the hashes in tests/fastnemo/test_patches.py (and WRITTEN_AGAINST)"
    )


@pytest.mark.parametrize("module", sorted(PINNED))
def test_the_package_pin_admits_the_version_a_patch_was_written_against(module):
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    patches = importlib.import_module(module)
    library = module.rsplit(".", 1)[1]
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    reqs = [r for r in map(Requirement, pins) if r.name == library]
    assert reqs, f"pyproject.toml does not name {library}"
    for req in reqs:
        assert req.specifier.contains(patches.WRITTEN_AGAINST), f"pyproject.toml's {req} and {module} disagree"


def test_the_version_guard_accepts_a_series_and_refuses_another_version():
    require("peft", "0.21.0", "0.21.2", accepts="0.21", module="fastnemo.patches.peft")
    require("trl", "1.15.0", "1.15.0", accepts="1.15.0", module="fastnemo.patches.trl")
    with pytest.raises(ImportError, match=r"peft 0\.21\.2, but peft 0\.22\.0 is installed: pip install 'peft==0\.21\.\*'"):
        require("peft", "0.22.0", "0.21.2", accepts="0.21", module="fastnemo.patches.peft")
    with pytest.raises(ImportError, match=r"trl 1\.15\.0, but trl 1\.15\.1 is installed: pip install 'trl==1\.15\.0'"):
        require("trl", "1.15.1", "1.15.0", accepts="1.15.0", module="fastnemo.patches.trl")
    with pytest.raises(ImportError):
        require("peft", "0.210.0", "0.21.2", accepts="0.21", module="fastnemo.patches.peft")  # not 0.21's series


def test_a_name_is_wrapped_once_and_its_original_stays_reachable():
    import types

    def kernel(x):
        return x + 1

    lib = types.SimpleNamespace(kernel=kernel)
    for _ in range(2):  # a second session in the same process must not wrap the wrapper
        wrap_once(lib, "kernel", lambda f: lambda x: 2 * f(x))
    assert lib.kernel(1) == 4 and lib.kernel.fastnemo_original is kernel
