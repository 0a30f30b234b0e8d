#!/usr/bin/env bash
# World sanity through the CLI (BENCHMARKS.md, "World sanity"): a PRM on the shipped backbone,
# trained one round with the default config on a fully labelled world pool, against a random-init
# PRM of the same shape trained the same way. Usage: bash bench/world_sanity.sh [OUT] [POOL_ROWS]
set -euo pipefail
OUT=${1:-runs/world_sanity}
N=${2:-8000}
T=${THREADS:-1}
timed() { local s; s=$(date +%s); "$@" 2>&1 | grep -v "Loading weights" | tail -2; echo "  ($(( $(date +%s) - s )) s) $*"; }
timed actprm generate --world arith --n "$N" --seed 1 --output "$OUT/pool" --overwrite --no-progress
timed actprm generate --world arith --n 600 --seed 2 --eval-set --output "$OUT/world_eval" --overwrite --no-progress
timed actprm annotate --backend verifier --wrong-rate 0 --input "$OUT/pool" --output "$OUT/labels" --overwrite --no-progress
timed actprm evaluate --data "$OUT/world_eval" --output "$OUT/eval_shipped" --overwrite --no-progress
timed actprm train --trajectories "$OUT/pool" --annotations "$OUT/labels/annotations" --output "$OUT/prm" \
  --threads "$T" --overwrite --no-progress
timed actprm evaluate --data "$OUT/world_eval" --model "$OUT/prm" --output "$OUT/eval_trained" --overwrite --no-progress
timed actprm init-model --preset world --step-features lm_logprob --output "$OUT/random" --overwrite
timed actprm train --trajectories "$OUT/pool" --annotations "$OUT/labels/annotations" --model "$OUT/random" \
  --output "$OUT/prm_random" --threads "$T" --overwrite --no-progress
timed actprm evaluate --data "$OUT/world_eval" --model "$OUT/prm_random" --output "$OUT/eval_random" --overwrite --no-progress
