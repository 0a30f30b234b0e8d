#!/usr/bin/env bash
# Create .venv (once) and install actprm with its test extras into it (again when pyproject.toml changes).
# CPU machines: torch comes from ACTPRM_TORCH (default torch==2.13.0, the CPU wheel on these machines).
# GPU machines: install your CUDA build of torch into .venv first (or set ACTPRM_TORCH=torch); it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.actprm-installed
log=.venv/setup.log
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing actprm and its dependencies into .venv (first run takes a few minutes; log: $log)" >&2
  {
    python -m pip install --upgrade pip &&
    { python -c "import torch" 2>/dev/null || python -m pip install "${ACTPRM_TORCH:-torch==2.13.0}"; } &&
    python -m pip install -e ".[test]"
  } >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "setup: install failed (see $log)" >&2; exit 1; }
  python -c "import actprm, torch, ray" || { echo "setup: install failed" >&2; exit 1; }
  touch "$stamp"
fi
