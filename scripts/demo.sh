#!/usr/bin/env bash
# The main job on the embedded default: `actprm demo` - a world pool and eval set, rounds of ActPRM and of
# random selection with the verifier annotator on a local Ray, a report with plots (see README, "Two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
actprm demo --config configs/demo.yaml "$@"
