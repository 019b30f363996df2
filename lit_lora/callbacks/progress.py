"""The progress bar: loss, learning rate, supervised tokens per second and the run's time left."""

from __future__ import annotations

import datetime
import math
import time

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

# Logged names (kept in the CSV and other loggers) -> the shorter ones the bar shows.
SHORT_NAMES = {
    "train/loss": "loss",
    "train/lr": "lr",
    "train/supervised_tokens_per_sec": "tok/s",
    "train/examples_per_sec": "ex/s",
    "train/pairs_per_sec": "pairs/s",
    "val/loss": "val_loss",
    "val/perplexity": "val_ppl",
}


class RunProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar with short metric names and ``eta``, the time left of the whole run.

    Lightning's own bar shows only the time left of the current epoch. ``eta`` is the
    optimizer steps still to go (of ``trainer.estimated_stepping_batches``) at the
    average pace of the steps this run has done so far, validation included.
    """

    # (time, global step) when this run's training began; None before.
    _start: tuple[float, int] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # A resumed run starts at a later step; only this run's steps give the pace.
        self._start = (time.monotonic(), trainer.global_step)

    def get_metrics(
        self, trainer: Trainer, pl_module: LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """The bar's metrics under their short names, without the logger version, plus ``eta``."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = {SHORT_NAMES.get(name, name): value for name, value in metrics.items()}
        eta = self.time_left(trainer)
        if eta is not None:
            shown["eta"] = eta
        return shown

    def time_left(self, trainer: Trainer) -> str | None:
        """``H:MM:SS`` until the last optimizer step, or None before the first step or for an endless run."""
        if self._start is None:
            return None
        started, first_step = self._start
        done = trainer.global_step - first_step
        total = trainer.estimated_stepping_batches
        if done <= 0 or not math.isfinite(total):
            return None
        seconds = (time.monotonic() - started) / done * max(total - trainer.global_step, 0)
        return str(datetime.timedelta(seconds=round(seconds)))
