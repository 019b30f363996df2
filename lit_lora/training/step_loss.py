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
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy


def gradients_visible(strategy: Strategy) -> bool:
    """Whether the step's gradients are in ``p.grad`` when the optimizer step starts (not under DeepSpeed)."""
    return not isinstance(strategy, DeepSpeedStrategy)


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

    def add(self, loss_sum: torch.Tensor, count: torch.Tensor, trainer: Trainer) -> torch.Tensor:
        """Count one micro-batch (its summed loss and number of units); the loss its backward takes.

        Args:
            loss_sum: The micro-batch's summed loss.
            count: The units it sums over.
            trainer: The running trainer (its strategy and accumulation).
        """
        self.loss_sum = self.loss_sum + loss_sum.detach()
        self.count = self.count + count
        if self.start is None:
            self.start = time.perf_counter()
        if not gradients_visible(trainer.strategy):
            # DeepSpeed keeps gradients in its own partitions, where they cannot be
            # rescaled at the step: normalise the loss instead, by the units of this
            # micro-batch on all devices (it averages over them). That is the step's
            # mean with one micro-batch per step, which the config checks enforce.
            total = trainer.strategy.reduce(torch.as_tensor(count, dtype=torch.float32), reduce_op="sum")
            return loss_sum * trainer.world_size / total.clamp(min=1)
        # Lightning divides what we return by accumulate_grad_batches before backward;
        # multiply it back so the gradients stay plain sums, normalised at the step.
        return loss_sum * trainer.accumulate_grad_batches

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
        if not gradients_visible(strategy):
            # Normalised through the loss (add); DeepSpeed logs its own gradient norm.
            return StepResult(loss_sum / count, count, time.perf_counter() - self.start, torch.tensor(float("nan")))
        # Data-parallel strategies average gradients over devices, hence world_size.
        grads = [p.grad for p in parameters if p.grad is not None]
        torch._foreach_mul_(grads, world_size / count)
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        seconds = time.perf_counter() - self.start
        return StepResult(loss=loss_sum / count, count=count, seconds=seconds, grad_norm=grad_norm)
