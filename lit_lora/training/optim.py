"""Optimizer parameter groups and learning-rate schedules.

The module hands the optimizer factory (chosen in YAML) only the trainable
parameters, split into groups here; the schedule is stepped once per optimizer
step, with the total number of steps supplied by the trainer at run time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lit_lora.errors import ConfigError

# Parameter names of the token embedding and output head: trained only through
# LoRA's ``modules_to_save``, and then better at a lower learning rate, since a
# full-rank update of these large matrices moves every token's representation.
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_out")


def default_optimizer(params: Iterable[Any]) -> Optimizer:
    """bitsandbytes ``PagedAdamW8bit`` with lr 2e-4 and no weight decay: the QLoRA recipe.

    8-bit states cut optimizer memory by 75%; paging moves them to CPU memory under
    pressure instead of failing (bitsandbytes falls back to plain 8-bit on CPU).
    """
    import bitsandbytes as bnb  # imported here: loading it probes CUDA and prints notes

    return bnb.optim.PagedAdamW8bit(params, lr=2e-4, weight_decay=0.0)


def parameter_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], embedding_lr_ratio: float
) -> list[dict]:
    """Split the trainable parameters into optimizer groups.

    Matrices are decayed with the optimizer's own ``weight_decay``; biases and norm
    weights (anything with fewer than two dimensions) never are, as decaying a scale
    or an offset towards zero only hurts. Embedding and output-head weights get their
    own group whose learning rate is later scaled by ``embedding_lr_ratio``.

    Args:
        named_parameters: ``(name, parameter)`` pairs; frozen ones are skipped.
        embedding_lr_ratio: Learning-rate multiplier for embedding / head weights.

    Returns:
        Non-empty groups in the order decay, no-decay, embedding. The embedding group
        carries the key ``lr_ratio`` that :func:`scale_group_learning_rates` reads.
    """
    decay, no_decay, embedding = [], [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            no_decay.append(param)
        elif any(part in name for part in EMBEDDING_NAMES) and "lora_" not in name:
            embedding.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": embedding, "lr_ratio": embedding_lr_ratio},
    ]
    return [group for group in groups if group["params"]]


def scale_group_learning_rates(optimizer: Optimizer) -> None:
    """Apply each group's ``lr_ratio`` to the learning rate the optimizer factory set.

    Done after construction because the base learning rate lives inside the
    factory's arguments (the YAML), which the module does not read.
    """
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.pop("lr_ratio", 1.0)


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate schedule: linear warmup, then cosine, linear or constant.

    The multiplier at optimizer step ``s`` (0-based) of ``T`` total steps with ``W``
    warmup steps is ``(s + 1) / (W + 1)`` during warmup (so the first step already
    learns), then for ``progress = (s - W) / (T - W)``: cosine
    ``min + (1 - min) * (1 + cos(pi * progress)) / 2``, linear
    ``min + (1 - min) * (1 - progress)``, or constant ``1``.

    Args:
        kind: Shape after warmup: ``cosine`` (decays smoothly to the floor),
            ``linear`` (decays steadily to the floor) or ``constant``.
        warmup_ratio: Fraction of the total optimizer steps spent warming up
            (rounded up). Ignored when ``warmup_steps`` is set.
        warmup_steps: Exact number of warmup steps; overrides ``warmup_ratio``.
        min_lr_ratio: Floor of the decay, as a fraction of the peak learning rate.
    """

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"model.scheduler.warmup_ratio: {self.warmup_ratio} must be in [0, 1), e.g. 0.03.")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"model.scheduler.warmup_steps: {self.warmup_steps} must be >= 0 or null.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"model.scheduler.min_lr_ratio: {self.min_lr_ratio} must be in [0, 1], e.g. 0.0 or 0.1.")

    def num_warmup_steps(self, total_steps: int) -> int:
        """Warmup length for a run of ``total_steps`` optimizer steps."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return math.ceil(self.warmup_ratio * total_steps)

    def multiplier(self, step: int, total_steps: int) -> float:
        """Learning-rate multiplier at 0-based optimizer step ``step``."""
        warmup = self.num_warmup_steps(total_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay

    def build(self, optimizer: Optimizer, total_steps: int) -> LambdaLR:
        """A ``LambdaLR`` over ``total_steps`` optimizer steps, to be stepped per step."""
        if total_steps < 1:
            raise ConfigError(
                f"The trainer plans {total_steps} optimizer steps; set trainer.max_epochs or trainer.max_steps."
            )
        return LambdaLR(optimizer, lambda step: self.multiplier(step, total_steps))


def resync_learning_rates(scheduler: LambdaLR) -> None:
    """Set each group's lr from the schedule at its current step.

    A resumed optimizer carries the lr of the step it stopped at, computed for the
    old run length; when the run is extended (a larger ``max_epochs``), the schedule
    is rebuilt for the new length, and this makes the next step follow it at once.
    """
    for group, base_lr, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * multiplier(scheduler.last_epoch)


def configured_settings(optimizer: Optimizer) -> list[dict[str, Any]]:
    """Each group's settings without its parameters: what this run's config asks for."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def apply_configured_settings(
    optimizer: Optimizer, configured: list[dict[str, Any]], scheduler: LambdaLR | None
) -> set[str]:
    """Put this run's configured settings back on an optimizer restored from a checkpoint.

    Restoring brings back the settings the checkpoint was saved with, so resuming a
    diverged run "with a lower learning rate" would silently keep the old one. The
    config wins; the moments and the step count stay as saved.

    Args:
        optimizer: The restored optimizer.
        configured: Its groups' settings before the restore, from :func:`configured_settings`.
        scheduler: The schedule, whose peaks follow the configured learning rates.

    Returns:
        The changes, as ``"key saved -> configured"``, to report.
    """
    changes = set()
    for group, settings in zip(optimizer.param_groups, configured):
        for key, value in settings.items():
            # A saved "lr" is the scheduled one of its step; its peak is "initial_lr".
            saved = group.get("initial_lr", group["lr"]) if key == "lr" else group.get(key)
            if saved != value:
                changes.add(f"{key} {saved} -> {value}")
            group[key] = value
        group["initial_lr"] = settings["lr"]  # the schedule's peak
    if scheduler is not None:
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    return changes


def planned_steps(trainer: Any) -> int:
    """The optimizer steps the trainer plans: the length the schedule spans.

    Raises:
        ConfigError: The run has no end (no ``max_epochs`` nor ``max_steps``).
    """
    total_steps = trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ConfigError(
            "trainer: the run has no end; set trainer.max_epochs or trainer.max_steps so the schedule knows its length."
        )
    return int(total_steps)


def settle_restored_optimizer(
    optimizer: Optimizer, configured: list[dict[str, Any]], scheduler: LambdaLR | None, resumed: bool
) -> None:
    """Before the first step of a run: this config's settings over a restored optimizer's, the lr on schedule.

    Args:
        optimizer: The run's optimizer, restored from a checkpoint when ``resumed``.
        configured: Its groups' settings before any restore (:func:`configured_settings`).
        scheduler: The schedule, if any.
        resumed: Whether the run resumed from a checkpoint.
    """
    if resumed:
        changes = apply_configured_settings(optimizer, configured, scheduler)
        if changes:
            rank_zero_info(
                f"lit_lora: resuming with this config's optimizer settings, not the checkpoint's: "
                f"{', '.join(sorted(changes))}"
            )
    # After a restore, the schedule may cover a longer run than the one saved.
    if scheduler is not None:
        resync_learning_rates(scheduler)
