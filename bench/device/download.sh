#!/usr/bin/env bash
# Fetch the GPU-side wheels the H100 test machine lacks into the git-ignored .wheels/ (run on a CPU machine
# with PyPI access; the device reaches no registry). Each chunk folder stays under the 64 MiB a device call
# carries, so each is staged by its own call (see bench/README.md).
#   .wheels/kernels  mamba-ssm + causal-conv1d sm_90 builds for torch 2.11 cu130 (58 MiB: carried alone)
#   .wheels/c1       trl, datasets (+dill, multiprocess), bitsandbytes (cu130 build only), unsloth (without
#                    its web UI), unsloth_zoo and their small deps the device image lacks (~17 MiB)
#   .wheels/v1..vN   vllm 0.26.0 (the newest that pins torch 2.11, the device's) slimmed for Hopper, with the
#                    deps `from vllm import LLM` needs (../shared/docs/vllm-on-the-lane.md), unpacked as a
#                    site tree, xz-compressed and split into < 60 MiB pieces (stage.sh joins them)
# The device image already has torch 2.11, transformers 5.17, peft, accelerate, pyarrow, xxhash, fsspec,
# pandas, einops, triton, sentencepiece, click, rich (see the device KINDS.md package list).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
W="$root/.wheels"
KERNELS_FROM="${KERNELS_FROM:-/work/shared/gpu-wheels}"
mkdir -p "$W/all" "$W/c1" "$W/kernels"
rm -f "$W/c1/"*.whl "$W/kernels/"*.whl
pipdl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$W/all" "$@"
}
pipdl trl==1.15.0 bitsandbytes==0.50.2 unsloth==2026.10.9 unsloth_zoo==2026.10.9 datasets==4.8.5 \
  "dill<0.4.2" "multiprocess<0.70.20" torchao==0.18.0 tyro docstring-parser typeguard shtab \
  cut_cross_entropy msgspec nest-asyncio pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection

slim="python3 $root/bench/device/slim_wheel.py"
# unsloth: 25 of its 28 MB are the "studio" web UI and its CLI, which training never imports.
$slim "$W"/all/unsloth-2026.10.9-py3-none-any.whl "$W/c1" studio/ unsloth_cli/
# bitsandbytes: torch cu130 loads libbitsandbytes_cuda130.so; drop the other 14 CUDA/ROCm/XPU builds.
drop=$(unzip -Z1 "$W"/all/bitsandbytes-0.50.2-*.whl | grep -E 'libbitsandbytes_(cuda1[12]|cuda132|rocm|xpu)')
$slim "$W"/all/bitsandbytes-0.50.2-*.whl "$W/c1" $drop
for n in trl-1.15.0 datasets-4.8.5 unsloth_zoo-2026.10.9 dill multiprocess torchao tyro docstring_parser \
  typeguard shtab cut_cross_entropy msgspec nest_asyncio pydantic-2 pydantic_core annotated_types typing_inspection; do
  cp "$W"/all/$n*.whl "$W/c1/"
done
cp "$KERNELS_FROM"/mamba_ssm-2.3.2.post1-*.whl "$KERNELS_FROM"/causal_conv1d-1.7.0-*.whl "$W/kernels/"

# vLLM: everything `from vllm import LLM` + nemotron_h + LoRA + sleep mode imports on SM90. Not mistral_common
# (once importable, transformers routes through it and needs jsonschema + pydantic-extra-types), not
# flashinfer/tilelang/cutlass-dsl (not imported on this path; VLLM_USE_FLASHINFER_SAMPLER=0).
VLLM_DEPS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection msgspec pyzmq cbor2 pybase64
  openai-harmony==0.0.8 cachetools "openai>=2,<3" distro sniffio "llguidance>=1.7,<1.8" xgrammar==0.2.7
  apache-tvm-ffi==0.1.10 "fastapi>=0.136,<0.137" "starlette>=1,<2" partial-json-parser)
pipdl --platform manylinux_2_31_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux1_x86_64 vllm==0.26.0 "${VLLM_DEPS[@]}"
site="$W/vllm-site"
rm -rf "$site" "$W"/v[0-9]* && mkdir -p "$site"
for whl in "$W"/all/vllm-0.26.0-*.whl "$W"/all/{pydantic-2.14.4,pydantic_core-2.50.5,annotated_types,typing_inspection,\
msgspec,pyzmq,cbor2,pybase64,openai_harmony-0.0.8,cachetools,openai-2,distro,sniffio,llguidance-1.7,\
xgrammar-0.2.7,apache_tvm_ffi-0.1.10,fastapi-0.136,starlette-1,partial_json_parser}*.whl; do
  unzip -q -o "$whl" -d "$site"
done
# Hopper does not need: FA2 (imported in a try; FA3 is chosen on SM90), the `vllm serve` Rust frontend, the
# Blackwell fmha kernels, deep_gemm's builds for other Pythons than the device's 3.12.
rm -rf "$site"/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so "$site"/vllm/vllm-rs "$site"/vllm/third_party/fmha_sm100 \
  "$site"/vllm/third_party/deep_gemm/_C.cpython-31{0,1,3,4}-*.so "$site"/vllm/entrypoints/serve/instrumentator/static
tar -C "$site" -cf - . | xz -T2 -6 >"$W/vllm-site.tar.xz"
(cd "$W" && split -b 58m -d -a 1 vllm-site.tar.xz vllm-site.tar.xz.part)
for part in "$W"/vllm-site.tar.xz.part*; do
  d="$W/v$((${part##*part} + 1))" && mkdir -p "$d" && mv "$part" "$d/"
done
rm -f "$W/vllm-site.tar.xz"
n=$(ls -d "$W"/v[0-9]* | wc -l)
for d in "$W"/v[0-9]*; do echo "$n" >"$d/parts"; done
du -sh "$W/c1" "$W/kernels" "$W"/v[0-9]*
