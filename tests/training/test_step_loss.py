"""What a micro-batch's backward takes: a plain sum to rescale at the step, or under DeepSpeed its normalised loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

from lit_lora.training.step_loss import StepLoss, gradients_visible


def test_the_backward_takes_the_sum_times_the_accumulation_lightning_divides_by():
    trainer = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")), accumulate_grad_batches=4)
    step = StepLoss()
    assert step.add(torch.tensor(6.0), torch.tensor(3), trainer).item() == 24.0
    step.add(torch.tensor(2.0), torch.tensor(1), trainer)
    assert (step.loss_sum.item(), step.count.item()) == (8.0, 4)


def test_under_deepspeed_the_backward_takes_the_micro_batchs_mean_over_all_devices():
    # DeepSpeed is CUDA-only and not installed here: its strategy without its __init__,
    # whose reduce answers as if the other of 2 devices had 5 supervised tokens.
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategy.reduce = lambda tensor, reduce_op: tensor + 5
    trainer = SimpleNamespace(strategy=strategy, accumulate_grad_batches=1, world_size=2)
    # This device: 6 nats over 3 tokens; all devices: 8 tokens. DeepSpeed averages the
    # 2 devices' gradients, so each returns its sum x 2 / 8.
    assert StepLoss().add(torch.tensor(6.0), torch.tensor(3), trainer).item() == pytest.approx(1.5)
    assert not gradients_visible(strategy)
    assert gradients_visible(DDPStrategy())
