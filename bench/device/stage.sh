#!/usr/bin/env bash
# On the device: install one carried chunk of wheels into /tmp/site (no deps, no index, no bytecode).
# /tmp/site survives between calls only while the machine stays warm (30 s): stage chunks back to back.
#   bash bench/device/stage.sh .wheels/kernels
#   bash bench/device/stage.sh .wheels/v1   (vLLM: pieces of one xz tarball, unpacked when the last arrives)
set -euo pipefail
chunk="${1:?usage: stage.sh CHUNKDIR}"
mkdir -p /tmp/site
if ls "$chunk"/vllm-site.tar.xz.part* >/dev/null 2>&1; then
  mkdir -p /tmp/vparts && cp "$chunk"/vllm-site.tar.xz.part* /tmp/vparts/
  n=$(cat "$chunk/parts")
  have=$(ls /tmp/vparts | wc -l)
  echo "vllm pieces: $have of $n"
  if [ "$have" -eq "$n" ]; then
    cat /tmp/vparts/vllm-site.tar.xz.part* | xz -d -T0 | tar -C /tmp/site -xf - && rm -rf /tmp/vparts
    echo "vllm unpacked into /tmp/site: $(ls /tmp/site | grep -c dist-info) dists"
  fi
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$chunk"/*.whl 2>&1 | grep -v "WARNING: Target directory" || true
echo "staged $(ls "$chunk" | wc -l) wheels from $chunk into /tmp/site: $(ls /tmp/site | grep -c dist-info) dists"
