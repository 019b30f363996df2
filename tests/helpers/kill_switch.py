"""Callbacks that SIGKILL the training process, send it a stop signal, or hold it, at a chosen moment.

For resume, export and two-writer tests. A kill, unlike an exception, runs no
cleanup: no ``finally``, no Lightning teardown, no flush. A stop signal (SIGTERM,
SIGUSR1) is what a scheduler sends before it kills.
The tests add these through ``--trainer.callbacks+=tests.helpers.kill_switch.…`` to a
``python -m lit_lora fit`` subprocess whose ``PYTHONPATH`` is the repository root.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def kill_now() -> None:
    """End this process the way an OOM killer or ``kill -9`` would."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtBatch(Callback):
    """Kill the run when batch ``batch`` of epoch ``epoch`` is about to be trained.

    Args:
        epoch: Epoch index (0-based).
        batch: Batch index within that epoch (0-based).
    """

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            kill_now()


class KillDuringSave(Callback):
    """Kill the run halfway through writing its ``save``-th checkpoint file.

    Patches ``torch.save`` in this process so that, on that call, half of the
    serialized bytes reach the file before the kill.

    Args:
        save: Which checkpoint write to interrupt (1 = the first).
    """

    def __init__(self, save: int) -> None:
        self.save = save

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        original = torch.save
        calls = 0

        def save(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == self.save:
                buffer = io.BytesIO()
                original(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                if isinstance(file, (str, os.PathLike)):
                    file = open(file, "wb")  # noqa: SIM115 - the kill closes nothing anyway
                file.write(data[: len(data) // 2])
                file.flush()
                kill_now()
            original(obj, file, *args, **kwargs)

        torch.save = save


class SignalAtBatch(Callback):
    """Send this process the signal ``name`` when batch ``batch`` of epoch ``epoch`` is about to be trained.

    Args:
        epoch: Epoch index (0-based).
        batch: Batch index within that epoch (0-based).
        name: The signal's name, e.g. ``SIGTERM``.
    """

    def __init__(self, epoch: int, batch: int, name: str = "SIGTERM") -> None:
        self.epoch = epoch
        self.batch = batch
        self.name = name

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.Signals[self.name])


class HoldAtStart(Callback):
    """Hold the run when training starts: write ``ready_file``, then sleep (a live run, for a test to meet).

    Args:
        ready_file: Created once the run holds; the test waits for it.
        seconds: How long to hold before training goes on (the test kills the run before).
    """

    def __init__(self, ready_file: str, seconds: float = 300.0) -> None:
        self.ready_file = ready_file
        self.seconds = seconds

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.ready_file).write_text(str(os.getpid()))
        time.sleep(self.seconds)


class KillDuringExport(Callback):
    """Kill the run in the middle of the adapter export, once the PEFT files are written.

    Patches the model card writer that :class:`~lit_lora.callbacks.export.AdapterExport`
    calls after the adapter's weights, config, tokenizer and training config.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import lit_lora.callbacks.export as export

        def model_card(*args: Any, **kwargs: Any) -> str:
            kill_now()
            return ""

        export.model_card = model_card
