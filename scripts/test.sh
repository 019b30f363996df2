#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: offline, CPU, a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint and formatting first: a minute of tests is not spent on a tree CI rejects.
"${PYTHON:-python3}" -m ruff check .
"${PYTHON:-python3}" -m ruff format --check .
# The slowest tests are listed at the end: the suite has to stay under 15 minutes on 2 cores.
"${PYTHON:-python3}" -m pytest -q --durations=15 "$@"
