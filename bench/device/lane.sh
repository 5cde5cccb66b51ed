#!/usr/bin/env bash
# The GPU lane on the H100 test machine, run in the background so that it keeps the GPU busy between the
# device calls that watch it (a call may last 10 minutes; the machine stays warm 30 s after each one).
#
#   bash bench/device/lane.sh start [STEP ...]   # after staging (bench/README.md); returns at once
#   bash bench/device/lane.sh wait SECONDS       # until the lane ends or SECONDS pass; results -> $OUT
#
# Steps run one after another from a copy of the repo (the next call's checkout may replace this one), each
# under its own time limit; every step's log and JSON lands in /tmp/lane, and `wait` packs them into
# $OUT/lane.tgz with a one-line status per step. Default steps (~15 min, the must-pass tests first, so
# that they fit one 30-minute session with staging): gpu-all probe sft-long rollout phase. Also: gpu-tests,
# gpu-4bit, sft-8k, sft.
set -uo pipefail
L=${LANE_DIR:-/tmp/lane}  # a second lane beside the first: LANE_DIR=/tmp/lane2 (its own steps, its own tgz)
cmd="${1:?usage: lane.sh start [STEP...] | wait SECONDS}"
shift

run_step() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "$(date +%T) start $name" >>"$L/STATUS"
  timeout -k 10 "$limit" "$@" >"$L/$name.log" 2>&1
  local rc=$?  # before any $(...) below resets $?
  echo "$(date +%T) end   $name rc=$rc $((SECONDS - t0))s" >>"$L/STATUS"
}

step() {
  case "$1" in
    probe) run_step probe 420 python3 bench/device/probe.py --shapes 2x256,2x1024,4x2048 --json "$L/probe.json" ;;
    gpu-all) run_step gpu-all 600 python3 -m pytest -m gpu tests -q -s ;;
    gpu-tests) run_step gpu-tests 600 python3 -m pytest -m gpu tests/fastnemo/test_gpu.py -q -s -k "not 4bit" ;;
    gpu-4bit) run_step gpu-4bit 400 python3 -m pytest -m gpu tests/fastnemo/test_gpu.py -q -s -k 4bit ;;
    sft) run_step sft 900 python3 bench/sft_throughput.py --shapes 2x1024 --warmup 1 --steps 3 --timeout 280 \
      --json "$L/sft.json" --log-dir "$L/sft-logs" ;;
    rollout) run_step rollout 600 python3 bench/rollout_throughput.py --groups 4,8 --prompts 8 --max-tokens 256 \
      --repeats 2 --timeout 280 --json "$L/rollout.json" --log-dir "$L/rollout-logs" ;;
    phase) run_step phase 600 python3 bench/phase_switch.py --cycles 1 --steps 2 --prompts 4 --max-tokens 128 \
      --repeats 1 --timeout 280 --json "$L/phase.json" --log-dir "$L/phase-logs" ;;
    sft-8k) run_step sft-8k 900 python3 bench/sft_throughput.py --shapes 1x8192 --warmup 1 --steps 3 \
      --timeout 280 --json "$L/sft-8k.json" --log-dir "$L/sft-8k-logs" ;;
    sft-long) run_step sft-long 900 python3 bench/sft_throughput.py --shapes 4x2048 --warmup 1 --steps 3 \
      --timeout 280 --variants fastnemo,trl,unsloth16,unsloth4 --json "$L/sft-long.json" --log-dir "$L/sft-long-logs" ;;
    # vLLM 0.26 (staged from .wheels/v1..v3) and the full 52-layer model under the 79.2 GiB cap
    # one process per engine: vLLM's sleep-mode allocator serves one engine per process
    vllm-tests) run_step vllm-tests 560 python3 -m pytest -m gpu tests/fastnemo/test_gpu.py -q -s -k "vllm and merge" ;;
    vllm-tests-lora) run_step vllm-tests-lora 400 python3 -m pytest -m gpu tests/fastnemo/test_gpu.py -q -s \
      -k "vllm and lora" ;;
    lora-tests) run_step lora-tests 500 python3 -m pytest -m gpu tests/fastnemo/test_gpu_lora.py -q -s ;;
    lora-traces) run_step lora-traces 600 python3 -m pytest -m gpu tests/fastnemo/test_gpu_lora.py \
      tests/fastnemo/test_trace_score.py -q -s -rs ;;
    full-vllm) run_step full-vllm 560 python3 bench/device/fullsize.py vllm --results "$L/records.jsonl" ;;
    full-hf) run_step full-hf 560 python3 bench/device/fullsize.py hf --results "$L/records.jsonl" ;;
    full-hf-fulltargets) run_step full-hf-fulltargets 400 python3 bench/device/fullsize.py hf --targets full \
      --parts sft --budgets 8192 --sft-steps 4 --results "$L/records.jsonl" ;;
    full-sft-levers) run_step full-sft-levers 500 python3 bench/device/fullsize.py hf --targets full --levers \
      --parts sft --budgets 4096,8192 --sft-steps 4 --no-batch1 --results "$L/records.jsonl" ;;
    full-sft-default) run_step full-sft-default 500 python3 bench/device/fullsize.py hf --parts sft \
      --budgets 8192,16384 --sft-steps 4 --skip-trl --results "$L/records.jsonl" ;;
    full-unsloth) run_step full-unsloth 900 python3 bench/device/fullsize.py unsloth --eval-prompts 128 \
      --eval-tokens 1024 --group-prompts 32 --group-tokens 1024 --budgets 8192 --sft-steps 4 --sft-rows 128 \
      --results "$L/records.jsonl" ;;
    full-unsloth-gen) run_step full-unsloth-gen 600 python3 bench/device/fullsize.py unsloth --parts gen \
      --eval-prompts 128 --eval-tokens 1024 --group-prompts 32 --group-tokens 1024 --unsloth-seqs 64 \
      --results "$L/records.jsonl" ;;
    full-sft-full) run_step full-sft-full 600 python3 bench/device/fullsize.py hf --targets full --levers \
      --parts sft --budgets 8192,16384 --sft-steps 5 --no-batch1 --results "$L/records.jsonl" ;;
    unsloth-tests) run_step unsloth-tests 560 python3 -m pytest -m gpu tests/fastnemo/test_gpu.py \
      tests/fastnemo/test_gpu_lora.py -q -s -rs -k unsloth ;;
    traces-gpu) run_step traces-gpu 300 python3 -m pytest -m gpu tests/fastnemo/test_trace_score.py -q -s ;;
    # issue 22: 600-puzzle validation side by side, and the winners' recipe end to end (bench/README.md);
    # VAL_LIMIT=N runs the harness steps on the first N puzzles when device time is short
    doctor) run_step doctor 120 python3 -m fastnemo doctor ;;
    val-harness64) run_step val-harness64 560 python3 bench/device/validation.py harness --seqs 64 \
      --work "$L/vwork" --limit "${VAL_LIMIT:-0}" --outputs "$L/o64.json" --results "$L/records.jsonl" ;;
    val-harness256) run_step val-harness256 500 python3 bench/device/validation.py harness --seqs 256 \
      --work "$L/vwork" --limit "${VAL_LIMIT:-0}" --outputs "$L/o256.json" --compare "$L/o64.json" --results "$L/records.jsonl" ;;
    val-hf) run_step val-hf 420 python3 bench/device/validation.py hf --batch 16 --work "$L/vwork" \
      --results "$L/records.jsonl" ;;
    # the random full weights into /dev/shm, started in the first staging call beside the staging (a second lane:
    # LANE_DIR=/tmp/lane0 bash bench/device/lane.sh start save-weights): recipe-full waits for it on a lock
    save-weights) run_step save-weights 300 python3 -c "from pathlib import Path; from bench.device.fullsize import \
saved_model; print(*saved_model(52, Path('/dev/shm/fullsize')))" ;;
    recipe-full) run_step recipe-full 1100 python3 bench/device/recipe_fullsize.py --run-dir "$L/winners/run" \
      --results "$L/records.jsonl" ${RECIPE_OVERRIDES:-} ;;
    release-test) run_step release-test 300 python3 -m pytest -m gpu tests/fastnemo/test_gpu_lora.py -q -s -k release ;;
    score) run_step score 400 python3 bench/device/score_slice.py --results "$L/records.jsonl" ;;
    *) echo "unknown step $1" >>"$L/STATUS" ;;
  esac
}

case "$cmd" in
  start)
    rm -rf "$L" && mkdir -p "$L" && cp -r . "$L/repo"
    cd "$L/repo" || exit 1
    export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 FASTNEMO_GPU_REPORT=$L
    # mamba_ssm autotunes ~200 Triton configs on its first call; keep the winners on disk so that every
    # later process (each bench variant is one) reuses them instead of tuning again
    export TRITON_CACHE_AUTOTUNING=1
    # a card bigger than 80 GB (the H200) plays the user's H100: fastnemo caps its processes at 79.2 GiB
    total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 2>/dev/null || echo 0)
    [ "${total:-0}" -gt 100000 ] && export FASTNEMO_GPU_CAP_GIB=79.2
    # vLLM in-process (it shares the trainer's process) and without flashinfer (not staged)
    export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_USE_FLASHINFER_SAMPLER=0
    steps=("$@")
    [ ${#steps[@]} -eq 0 ] && steps=(gpu-all probe sft-long rollout phase)
    setsid nohup bash bench/device/lane.sh steps "${steps[@]}" >"$L/lane.log" 2>&1 </dev/null &
    echo "lane started: ${steps[*]}"
    ;;
  steps)
    for s in "$@"; do step "$s"; done
    echo "$(date +%T) lane done" >>"$L/STATUS"
    ;;
  refresh)  # a later call's checkout replaces the lane's copy: steps not yet started run the new code
    cp -r . "$L/repo" && echo "lane repo refreshed"
    ;;
  wait)
    limit="${1:?seconds}"
    t0=$SECONDS
    while ((SECONDS - t0 < limit)) && ! grep -q "lane done" "$L/STATUS" 2>/dev/null; do sleep 5; done
    cat "$L/STATUS"
    last=$(ls -t "$L"/*.log 2>/dev/null | head -1)
    [ -n "$last" ] && { echo "--- tail of $last"; tail -n 25 "$last"; }
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null
    # logs and JSON only: a recipe's run directory holds GBs of checkpoints and adapters
    tar -czf "${OUT:-/tmp}/$(basename "$L").tgz" -C "$L" --exclude repo --exclude vwork --exclude '*.safetensors' \
      --exclude '*.pt' --exclude '*.zip' --exclude '*.bin' --exclude 'checkpoint-*' . 2>/dev/null
    [ -f "$L/records.jsonl" ] && cp "$L/records.jsonl" "${OUT:-/tmp}/$(basename "$L")-records.jsonl"
    ;;
esac
