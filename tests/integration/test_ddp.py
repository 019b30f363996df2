"""Two devices train exactly what one device with twice the accumulation trains.

Each run is a real ``python -m lit_lora fit`` on configs/tiny.yaml: one process with
``accumulate_grad_batches: 2`` against two processes (DDP on gloo) with 1, for one
epoch of 41 examples in batches of 4. That is 11 global batches, an odd count, so the
second device runs a filler batch at the epoch's end (``lit_lora.data.sharding``).
Dropout is off and everything is float32, so the two trajectories may differ only by
the summation order of the gradient all-reduce: tolerance 1e-4 on every adapter
weight (measured: 0 for plain batches).
"""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.epoch import ADAPTER, fit_epoch, run_fit
from tests.helpers.tiny import assert_same_adapter

# Free memory whose 90% (7.2 MB) lies between what the tiny run's estimate needs
# (python -m lit_lora's heap, batch 4 x 81 tokens) with selective checkpointing on one of
# its two layers and on none (7.43 MB), on one device or two.
PARTIAL_PLAN_BYTES = 8_000_000

# The settings of each mode (data, and checkpointing for the last), given the files of tests/integration/conftest.py.
MODES = {
    "plain": lambda train, extra, spread: ["--data.train_file", train],
    "grouped": lambda train, extra, spread: ["--data.train_file", train, "--data.group_by_length", "true"],
    # Batches of short and long rows, each run as length-sorted sub-batches on every device.
    "split": lambda train, extra, spread: ["--data.train_file", spread, "--data.max_length", "192"],
    "mixed": lambda train, extra, spread: [
        "--data.train_file",
        "null",
        "--data.mix",
        json.dumps([{"path": train, "weight": 2.0}, {"path": extra, "weight": 1.0}]),
    ],
    "packed": lambda train, extra, spread: ["--data.train_file", train, "--data.packing", "true"],
    # gradient_checkpointing: auto told of too little memory to keep every layer's
    # activations: selective on the first of the two layers (tests.helpers.memory_plan).
    "partial_checkpointing": lambda train, extra, spread: [
        "--data.train_file",
        train,
        "--model.gradient_checkpointing",
        "auto",
        "--trainer.callbacks+=tests.helpers.memory_plan.PlanWithin",
        f"--trainer.callbacks.available={PARTIAL_PLAN_BYTES}",
        "--trainer.callbacks.checkpointed=1",
    ],
}


@pytest.mark.parametrize("mode", MODES)
def test_two_devices_train_what_one_device_with_twice_the_accumulation_trains(tmp_path, epoch_files, request, mode):
    data = MODES[mode](*epoch_files)
    # The plain two-device run is shared with the sharded tests (tests/integration/conftest.py).
    two = request.getfixturevalue("ddp_epoch") / ADAPTER if mode == "plain" else fit_epoch(tmp_path / "two", data, 2)
    one, two = load_file(fit_epoch(tmp_path / "one", data, 1)), load_file(two)
    assert one.keys() == two.keys()
    difference = max((one[name] - two[name]).abs().max().item() for name in one)
    print(f"{mode}: max abs adapter difference, 1 vs 2 devices: {difference:.3g}")
    assert difference < 1e-4
    # The adapters did train: B starts at zero.
    assert max(weight.abs().max().item() for name, weight in one.items() if "lora_B" in name) > 1e-3
    assert torch.isfinite(torch.cat([w.flatten() for w in two.values()])).all()


def test_two_devices_killed_mid_epoch_resume_to_the_uninterrupted_run(tmp_path):
    # 6 batches per device and epoch at accumulation 2: 3 steps an epoch, a checkpoint
    # every 2 steps, dropout on. Both processes kill themselves before batch 3 of
    # epoch 1, in the middle of step 5; the newest checkpoint is step 4.
    settings = ("--trainer.limit_train_batches", "6", "--step_checkpoint.every_n_train_steps", "2")
    uninterrupted = run_fit(tmp_path / "uninterrupted", 2, *settings)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-4000:]
    root = tmp_path / "resumed"
    kill = ("--trainer.callbacks+=tests.helpers.kill_switch.KillAtBatch", "--trainer.callbacks.epoch=1")
    killed = run_fit(root, 2, *settings, *kill, "--trainer.callbacks.batch=3")
    assert killed.returncode == -signal.SIGKILL
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 4)
    assert len(last["rng_states_by_rank"]) == 2

    resumed = run_fit(root, 2, *settings, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_adapter(root, tmp_path / "uninterrupted")
