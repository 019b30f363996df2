"""The loss of an optimizer step: the mean over its supervised units, across micro-batches and devices.

Each micro-batch contributes a loss *sum* and the number of units it sums over
(tokens, rows, pairs), and its backward leaves summed gradients. At the step, one
all-reduce totals both over the devices, and the gradients are scaled to those of the
step's mean loss. A per-micro-batch or per-device mean would instead weigh a unit of
a short micro-batch, or of a device with fewer units, more than another.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from lightning.pytorch.strategies import Strategy


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step trained on, over all devices.

    Args:
        loss: The step's mean loss (scalar tensor).
        count: The units it is the mean over (float scalar tensor, at least 1).
        seconds: Wall time from the step's first micro-batch to its optimizer step.
        grad_norm: The L2 norm of the normalised gradients, before clipping.
    """

    loss: torch.Tensor
    count: torch.Tensor
    seconds: float
    grad_norm: torch.Tensor


class StepLoss:
    """Sums the loss and its count over one optimizer step's micro-batches, then normalises the gradients.

    One instance per optimizer step: the module starts a new one after each step.
    """

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.count: torch.Tensor | int = 0
        self.start: float | None = None

    def add(self, loss_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Count one micro-batch: its summed loss (detached here) and its number of units."""
        self.loss_sum = self.loss_sum + loss_sum.detach()
        self.count = self.count + count
        if self.start is None:
            self.start = time.perf_counter()

    def normalise_gradients(
        self, strategy: Strategy, parameters: Iterable[torch.nn.Parameter], world_size: int
    ) -> StepResult:
        """Scale the summed gradients to the gradient of the step's mean loss over all devices.

        Call after the step's last backward (and AMP unscaling) and before clipping,
        so that clipping and the logged norm see the true gradient.

        Args:
            strategy: The trainer's strategy, whose ``reduce`` sums over devices.
            parameters: The trained parameters; those with a gradient are scaled in place.
            world_size: The devices whose gradients the strategy averages.
        """
        # One all-reduce for both sums: (loss sum, units) over all devices.
        loss_sum, count = strategy.reduce(torch.stack([self.loss_sum, self.count.float()]), reduce_op="sum")
        count = count.clamp(min=1)
        # Data-parallel strategies average gradients over devices, hence world_size.
        grads = [p.grad for p in parameters if p.grad is not None]
        torch._foreach_mul_(grads, world_size / count)
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        seconds = time.perf_counter() - self.start
        return StepResult(loss=loss_sum / count, count=count, seconds=seconds, grad_norm=grad_norm)
