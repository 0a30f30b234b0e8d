#!/usr/bin/env bash
# The main job on the embedded default: validate the shipped examples, create the tiny PRM, score.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
out=${1:-runs/demo}
actprm validate --config configs/validate.yaml --input examples/ --output "$out/checked" --overwrite
actprm init-model --preset tiny --seed 0 --output "$out/model" --overwrite
actprm score --config configs/score.yaml --input "$out/checked/valid" --output "$out/scored" \
  --model "$out/model" --overwrite
echo "demo: outputs in $out/ (checked/valid, checked/errors, scored/scored, scored/errors, */summary.json)"
