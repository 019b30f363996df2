#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: offline, CPU, a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The slowest tests are listed at the end: the suite has to stay under 10 minutes.
"${PYTHON:-python3}" -m pytest -q --durations=15 "$@"
