#!/usr/bin/env bash
# The test suite: set-up (first run only) then pytest. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# two workers (pytest-xdist), each test module on one of them: the suite's waits (judge servers, Ray, killed
# subprocesses) overlap. ACTPRM_TEST_WORKERS=0 runs it in one process.
exec python -m pytest -n "${ACTPRM_TEST_WORKERS:-2}" --dist loadfile "$@"
