"""Writing ``predict`` results to a JSON Lines file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Append each generated answer to ``<trainer.default_root_dir>/<filename>``.

    One JSON object per line, in data order: ``prompt`` (the rendered prompt),
    ``prediction`` and ``reference``. The file is rewritten at the start of each
    ``predict`` run; with several devices each rank writes ``<stem>.rank<N>.jsonl``.

    Args:
        filename: File name under ``trainer.default_root_dir``; an absolute path is
            used as it is.
    """

    def __init__(self, filename: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.filename = filename

    def path(self, trainer: Trainer) -> Path:
        """Where this rank writes."""
        path = Path(trainer.default_root_dir) / self.filename
        return path if trainer.world_size == 1 else path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: list[dict[str, str]],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        with self.path(trainer).open("a", encoding="utf-8") as file:
            for row in prediction:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
