#!/usr/bin/env bash
# GPU check of issue 7, about 6-7 minutes on one H100: the EfficientNet-B0 training-step benchmark (ours through
# SyncFreeTrainer, torchvision and timm in a plain loop; eager and compiled; plus the host-sync check), then,
# while time is left, B4 at 380x380 batch 64 eager (ours vs timm) and a B0 diagnostic, eager: our model through
# Composer's own Trainer and in the plain loop, against torchvision; then ours and timm eager with
# cudnn.benchmark off (the default turns it on for every row); then EfficientNetV2-S at its training size (300x300,
# batch 256, bf16), ours, torchvision and timm, eager and compiled. Right after the first B0 run come issue 17's lean
# rows (memory_efficient=True, ``ours-lean``): B0 against torchvision and timm, and B4 at 380x380 batch 64 beside our
# default mode and timm, eager and compiled; give BUDGET_S=570 to leave time for the rest. Every run writes JSON and
# a log under $OUT; the tables of all runs come last.
#
# Run from the repository root on the GPU machine after the wheel install line of
# ../shared/offline-gpu/README.md, which puts the project and Composer on PYTHONPATH.
# Environment: OUT (results folder; default a new temporary one), BUDGET_S (seconds for the whole script,
# default 450), BENCH_ARGS (options appended to every run; e.g. a tiny CPU check of this script:
#   OUT=/tmp/check BENCH_ARGS='--device cpu --batch-size 2 --resolution 32 --warmup 1 --steps 1 --windows 1
#   --no-compile' bash benchmarks/gpu_benchmark.sh).
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
BUDGET_S=${BUDGET_S:-450}
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
mkdir -p "$OUT"

# bench NAME LIMIT_S ARGS...: one benchmark process, stopped after LIMIT_S (its JSON keeps the rows done by then).
bench() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/status.txt"
  timeout -k 15 "$limit" python3 -m composer_efficientnet.benchmark "$@" "${EXTRA[@]}" --json "$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after ${SECONDS} s" | tee -a "$OUT/status.txt"
  grep -E '^[a-z-]+:(eager|compiled): ' "$OUT/$name.log"
}

# optional NAME MIN_S ARGS...: run only if MIN_S seconds of the budget are left, within what is left.
optional() {
  local name=$1 need=$2 left=$((BUDGET_S - SECONDS))
  shift 2
  if (( left < need )); then
    echo "== $name: skipped, ${left} s of the budget left, needs ${need} s" | tee -a "$OUT/status.txt"
    return
  fi
  bench "$name" "$left" "$@"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 -c 'import torch, composer; print("torch", torch.__version__, "composer", composer.__version__)' \
  | tee -a "$OUT/status.txt"

bench b0 330 --model efficientnet_b0
# Issue 17's lean rows: memory_efficient=True through SyncFreeTrainer against the peers, eager and compiled.
optional b0-lean 150 --model efficientnet_b0 --rows ours-lean,torchvision,timm --no-sync-check
optional b4-lean 180 --model efficientnet_b4 --resolution 380 --batch-size 64 --rows ours-lean,ours,timm \
  --no-sync-check
optional b4 70 --model efficientnet_b4 --resolution 380 --batch-size 64 --rows ours,timm --no-compile \
  --no-sync-check
optional b0-diagnostic 60 --model efficientnet_b0 --rows ours-composer,ours-loop,torchvision --no-compile \
  --no-sync-check
optional b0-no-cudnn-benchmark 45 --model efficientnet_b0 --rows ours,timm --no-compile --no-sync-check \
  --no-cudnn-benchmark
optional v2-s 150 --model efficientnet_v2_s --no-sync-check

reports=()
for name in b0 b0-lean b4-lean b4 b0-diagnostic b0-no-cudnn-benchmark v2-s; do
  [[ -s "$OUT/$name.json" ]] && reports+=("$OUT/$name.json")
done
echo
(( ${#reports[@]} )) && python3 -m composer_efficientnet.benchmark --report "${reports[@]}"
echo "results in $OUT after ${SECONDS} s"
