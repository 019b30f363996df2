"""One epoch of the tiny config on one device or several: the runs the multi-device tests compare.

One epoch of 41 examples in batches of 4 is 11 global batches, an odd count, so a
second device runs a filler batch at the epoch's end (``lit_lora.data.sharding``).
Dropout is off and everything is float32, so runs on different device counts may
differ only by the summation order of the gradient all-reduce.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.tiny import run_tiny

ROWS = 41
ADAPTER = Path("adapter") / "adapter_model.safetensors"
# A step checkpoint every 2 of the epoch's 6 steps (the newest two are kept), to resume from.
STEP_CHECKPOINTS = ("--step_checkpoint.every_n_train_steps", "2")


def run_fit(root: Path, devices: int, *extra: str) -> subprocess.CompletedProcess:
    """``fit`` on configs/tiny.yaml in its own process(es): one, or ``devices`` under DDP on gloo."""
    if devices > 1:
        extra = ("--trainer.devices", str(devices), "--trainer.strategy", "ddp", *extra)
    return run_tiny("fit", root, *extra)


def fit_epoch(root: Path, data: list[str], devices: int, *extra: str) -> Path:
    """One epoch without dropout at the effective batch of 8 examples (or packs); the adapter's file.

    Args:
        root: The run folder.
        data: ``--data.*`` arguments naming the training data.
        devices: 1, or the DDP processes (the accumulation halves with two).
        *extra: More arguments (a strategy config replaces DDP's).
    """
    done = run_fit(
        root,
        devices,
        *("--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--model.lora.dropout", "0.0"),
        *("--data.batch_size", "4", "--trainer.accumulate_grad_batches", str(2 // devices)),
        *data,
        *extra,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return root / ADAPTER
