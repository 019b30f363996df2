"""A module whose loss turns NaN at a chosen optimizer step, as a run with far too high
a learning rate does (the tiny model's pre-norm layers absorb even lr 10 for dozens of
steps, so a test cannot wait for that). Used as ``--model tests.helpers.diverging.DivergingModule``.
"""

from __future__ import annotations

import math

import torch

from lit_lora import LoRAModule


class DivergingModule(LoRAModule):
    """LoRAModule whose training loss is NaN from optimizer step ``NAN_AT_STEP`` on (1-based)."""

    NAN_AT_STEP = 3

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum, count = super().compute_loss(batch)
        if self.training and self.trainer.global_step + 1 >= self.NAN_AT_STEP:
            loss_sum = loss_sum * math.nan
        return loss_sum, count
