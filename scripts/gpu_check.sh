#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): installs the wheels that scripts/gpu_wheels.sh
# fetched into .whl/ (the GPU machine cannot download), then runs scripts/gpu_check.py,
# whose steps each have their own time budget (8 minutes together). Writes report.json
# and gpu_check.log under $OUT, or --out DIR. Exit status 0 when no step failed or timed out.
#   bash scripts/gpu_check.sh                       # on the GPU machine, .whl/ carried along
#   bash scripts/gpu_check.sh --dry-run --out DIR   # the plumbing, on CPU, no installation
#   bash scripts/gpu_check.sh --steps fit_1b,benchmark_1b
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/lit_lora_gpu_site}"

dry_run=0
for arg in "$@"; do
    [[ "$arg" == "--dry-run" ]] && dry_run=1
done

install_status="skipped"
install_seconds=0
if (( dry_run == 0 )); then
    shopt -s nullglob
    wheels=(.whl/*.whl)
    if (( ${#wheels[@]} == 0 )); then
        echo "gpu_check: error: no wheels in .whl/; run 'bash scripts/gpu_wheels.sh' where the registry is reachable" >&2
        exit 2
    fi
    start=$SECONDS
    # --no-index --no-deps: nothing can be downloaded there, and the image already has the rest.
    if "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"; then
        install_status="passed"
    else
        install_status="failed"
    fi
    install_seconds=$(( SECONDS - start ))
    echo "gpu_check: installed ${#wheels[@]} wheels into $SITE: $install_status (${install_seconds} s)"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# lit_lora itself from this checkout (nothing installs it on the GPU machine).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

exec "$PYTHON" scripts/gpu_check.py --install-status "$install_status" --install-seconds "$install_seconds" "$@"
