#!/usr/bin/env bash
# Latency of each recipe's kernels on photo-vit (docs/QUANTIZATION.md, "Real-ViT statistics"):
# quantizes photo-vit once per recipe/method, then `lowbit bench model --batch 16` (median of
# 10 runs) under the default kernel plan and under `--plan gpu` (the workgroup-tiled kernels a
# real GPU gets, run here on lavapipe).
#   tools/quant_latency.sh [LOWBIT] [CALIB]      (defaults: target/debug/lowbit, /tmp/photo-data/calib)
set -euo pipefail
LOWBIT=${1:-target/debug/lowbit}
CALIB=${2:-/tmp/photo-data/calib}
WORK=${WORK:-/tmp/quant-latency}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
rm -rf "$WORK" && mkdir -p "$WORK"
MODEL=assets/models/photo-vit
CELLS=(
  "w8a8:"
  "w4a16:"
  "w4a8:noisy,adalog,gptq,clip"
  "w4a8:dynamic,adalog,gptq,clip"
  "w4a4:repq,noisy,adalog,gptq,clip"
  "w4a4:dynamic,rotate,repq,adalog,gptq,clip"
  "w4a4:dynamic,asymmetric,rotate,repq,adalog,gptq,clip"
)
bench() {  # name folder
  for plan in auto gpu; do
    ms=$("$LOWBIT" bench model --model "$2" --batch 16 --reps 10 --plan "$plan" --json --quiet | python3 -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')
    echo "$1 plan=$plan median_ms(batch16)=$ms ms_per_image=$(python3 -c "print(round($ms/16, 2))")"
  done
}
bench "f32" "$MODEL"
for cell in "${CELLS[@]}"; do
  recipe=${cell%%:*}; method=${cell#*:}
  out="$WORK/$recipe-${method//,/_}"
  args=(quantize --model "$MODEL" --recipe "$recipe" --calib "$CALIB" --calib-count 32 --seed 0 --out "$out" --quiet)
  [ -n "$method" ] && args+=(--method "$method")
  "$LOWBIT" "${args[@]}" > /dev/null
  bench "$recipe ${method:-default}" "$out"
done
