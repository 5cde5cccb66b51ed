"""The ``[gpu]`` extra resolves against the package registry for the H100 (Python 3.12, x86_64 manylinux),
without installing anything: a pin that stops resolving fails here, not on the user's rented GPU.

uv resolves the ~230 packages in about 25 s; ``pip install --dry-run`` (pip 23.2, the flags in README's
"On the H100") does the same in about 6 minutes, too slow for CI.
"""

from __future__ import annotations

import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "https://pypi.org/simple/"
# the lane's glibc or older: Ubuntu 22.04 (glibc 2.35), the usual image on rented H100s
PLATFORM = "x86_64-manylinux_2_35"


def registry_reachable() -> bool:
    try:
        with urllib.request.urlopen(REGISTRY + "pip/", timeout=10):
            return True
    except OSError:
        return False


def gpu_pins() -> dict[str, str]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    return dict(p.split("==", 1) for p in extra)


def test_gpu_extra_pins_the_lane_and_leaves_the_mamba_kernels_to_the_second_step():
    pins = gpu_pins()
    assert pins == {"torch": "2.11.0", "vllm": "0.26.0", "unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9",
                    "bitsandbytes": "0.50.2", "transformers": "5.17.0", "trl": "1.15.0", "peft": "0.21.*"}
    readme = (ROOT / "README.md").read_text()
    assert "pip install --no-build-isolation --no-deps mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0" in readme


@pytest.mark.slow
def test_gpu_extra_resolves_for_python_312_manylinux(tmp_path):
    uv = pytest.importorskip("uv", reason="uv is in the dev extra: pip install -e '.[dev]'")
    if not registry_reachable():
        pytest.skip(f"package registry {REGISTRY} unreachable")
    out = tmp_path / "gpu.txt"
    cmd = [uv.find_uv_bin(), "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", "gpu",
           "--python-version", "3.12", "--python-platform", PLATFORM, "--only-binary", ":all:",
           "--index-url", REGISTRY, "--no-config", "--quiet", "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = dict(line.split("==", 1) for line in out.read_text().splitlines() if "==" in line
                    and not line.startswith("#"))
    for name, version in gpu_pins().items():
        got = resolved[name.replace("_", "-")] if name.replace("_", "-") in resolved else resolved[name]
        assert got.strip().split()[0].startswith(version.rstrip("*")), (name, got)
