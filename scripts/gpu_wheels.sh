#!/usr/bin/env bash
# Downloads, here where the package registry is reachable, the wheels that the GPU
# machine's image lacks (it has torch, Lightning, transformers, PEFT, pyarrow, pandas,
# xxhash, but cannot download anything), for its Python 3.12 on manylinux x86_64, into
# the git-ignored .whl/ folder; scripts/gpu_check.sh installs them there. No torch.
# Versions are the ones this project is developed and tested with (pyproject.toml's
# lower bounds, resolved here). Prints the set's total size, which must stay well under
# the 64 MiB that can travel with the repository.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEST=.whl
LIMIT_MIB=56  # under the 64 MiB limit with room to spare: the repository travels in the same 64 MiB

# name==version, one per line. Each package's own dependencies are named explicitly
# (--no-deps): the image already holds numpy, pandas, pyarrow, pyyaml, requests, tqdm,
# filelock, fsspec, huggingface-hub, packaging, xxhash, typing-extensions, and, for DeepSpeed,
# einops, msgpack, ninja, nvidia-ml-py, psutil and py-cpuinfo.
WHEELS=(
    "bitsandbytes==0.50.2"      # 4-bit NF4 layers and the paged 8-bit optimizers, CUDA kernels included
    "datasets==5.2.0"           # lit_lora's data modules
    "dill==0.4.1"               # datasets' dependency
    "multiprocess==0.70.19"     # datasets' dependency
    "jsonargparse==4.53.0"      # LightningCLI and lit_lora's subcommands
    "docstring-parser==0.18.0"  # jsonargparse[signatures]: help text from docstrings
    "typeshed-client==2.15.0"   # jsonargparse[signatures]: stub-based signature resolution
    "gguf==0.19.0"              # reading GGUF checkpoints (imported by lit_lora.artifacts)
    # DeepSpeed's own dependencies (configs/strategies/deepspeed_*.yaml); DeepSpeed below.
    "hjson==3.1.0"
    "pydantic==2.13.4"
    "pydantic-core==2.46.4"
    "annotated-types==0.7.0"
    "typing-inspection==0.4.2"
)
# DeepSpeed is published as a source archive only: built here into a pure-Python wheel
# (DS_BUILD_OPS=0: its CUDA ops are compiled just in time on the GPU machine, whose
# image has nvcc). Building reads the installed torch, hence no build isolation.
DEEPSPEED="deepspeed==0.19.8"

rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any \
    -d "$DEST" "${WHEELS[@]}"
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$DEST" "$DEEPSPEED"

ls -l "$DEST"
bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f 1)
mib=$(( (bytes + 1048575) / 1048576 ))
count=$(ls "$DEST"/*.whl | wc -l)
echo "gpu_wheels: ${count} wheels, ${bytes} bytes (${mib} MiB) in ${DEST}/"
if (( count != ${#WHEELS[@]} + 1 )); then
    echo "gpu_wheels: expected $(( ${#WHEELS[@]} + 1 )) wheels, got ${count}" >&2
    exit 1
fi
if (( mib > LIMIT_MIB )); then
    echo "gpu_wheels: ${mib} MiB is over the ${LIMIT_MIB} MiB this set may take of the 64 MiB that travels" >&2
    exit 1
fi
