#!/usr/bin/env bash
# The main job on the embedded default: validate the shipped examples; generate a world pool, score it
# with the shipped PRM (ActPRM marks the uncertain trajectories), label it with the verifier annotator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
out=${1:-runs/demo}
actprm validate --config configs/validate.yaml --input examples/ --output "$out/checked" --overwrite
actprm generate --world arith --n 2000 --seed 1 --output "$out/world" --overwrite
actprm score --config configs/score.yaml --input "$out/world" --output "$out/scored" --overwrite
actprm annotate --config configs/judge/verifier.yaml --input "$out/world" --output "$out/annotated"
echo "demo: outputs in $out/ (checked/, world/, scored/scored, scored/selection.png, annotated/annotations)"
