"""A callback that plans a fit for less memory than the machine has, and checks which layers it checkpoints.

With the memory of a test machine, ``gradient_checkpointing: auto`` checkpoints no
layer of the tiny model: its activations are a sliver of the process. Told that only
``available`` bytes are free, the memory plan (``lit_lora.training.planning``) has to
checkpoint some layers. Added to a ``python -m lit_lora fit`` subprocess with
``--trainer.callbacks+=tests.helpers.memory_plan.PlanWithin``.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from transformers.modeling_layers import GradientCheckpointingLayer

import lit_lora.training.planning as planning


class PlanWithin(Callback):
    """Make the memory plan see ``available`` bytes free, and require ``checkpointed`` layers checkpointed.

    Args:
        available: Bytes the plan is told are free on every device.
        checkpointed: How many decoder layers (the first ones) the plan must checkpoint.
    """

    def __init__(self, available: int, checkpointed: int) -> None:
        self.available = available
        self.checkpointed = checkpointed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning calls this before configure_model, where the plan is made.
        planning.available_memory = lambda device: self.available

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layers = [m for m in pl_module.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        flags = [bool(layer.gradient_checkpointing) for layer in layers]
        expected = [index < self.checkpointed for index in range(len(layers))]
        if flags != expected:
            raise AssertionError(f"checkpointed layers {flags}, expected {expected} (rank {trainer.global_rank})")
