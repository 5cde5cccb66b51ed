#!/usr/bin/env bash
# On the device: install one carried chunk of wheels into /tmp/site (no deps, no index, no bytecode).
# /tmp/site survives between calls only while the machine stays warm (30 s): stage chunks back to back.
#   bash bench/device/stage.sh .wheels/kernels
set -euo pipefail
chunk="${1:?usage: stage.sh CHUNKDIR}"
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$chunk"/*.whl 2>&1 | grep -v "WARNING: Target directory" || true
echo "staged $(ls "$chunk" | wc -l) wheels from $chunk into /tmp/site: $(ls /tmp/site | grep -c dist-info) dists"
