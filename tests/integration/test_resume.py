"""Stopped runs resume exactly: SIGKILL mid-epoch, SIGKILL in the middle of a checkpoint write, and
SIGTERM (preemption) in the middle of a gradient-accumulation step.

Each run is a real ``python -m lit_lora fit`` process on configs/tiny.yaml, shortened
to 2 epochs of 12 batches (6 optimizer steps each, accumulation 2) with a step
checkpoint every 2 optimizer steps. LoRA dropout stays at the config's 0.05, so the
resumed run must also restore the RNG, not only data order, optimizer and schedule.

Tolerance: zero. On CPU in float32 every kernel here is deterministic, so the resumed
run must end with bit-identical adapter weights; any lost or repeated batch, RNG draw
or optimizer state shows up as a difference.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import assert_same_adapter, run_tiny


def fit(root: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run ``fit`` in its own process: 12 batches an epoch, a step checkpoint every 2 steps."""
    return run_tiny(
        "fit", root, "--trainer.limit_train_batches", "12", "--step_checkpoint.every_n_train_steps", "2", *extra
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = fit(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_step_checkpoints_keep_the_newest_two(uninterrupted: Path):
    names = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    # 12 optimizer steps: step checkpoints at 2, 4, ..., 12, of which 10 and 12 are
    # kept; one checkpoint per epoch; one last; the best by val/loss; no partial file left behind.
    assert names == [
        "best.ckpt",
        "epoch00-step6.ckpt",
        "epoch01-step12.ckpt",
        "last.ckpt",
        "step10.ckpt",
        "step12.ckpt",
    ]


def test_kill_mid_epoch_then_resume_from_last_equals_uninterrupted(uninterrupted: Path, tmp_path: Path):
    # Killed before batch 9 of epoch 1: the newest checkpoint is step 10 (after batch 7),
    # so batch 8 is the first one the resumed run must train, in the middle of an epoch.
    killed = fit(
        tmp_path,
        "--trainer.callbacks+=tests.helpers.kill_switch.KillAtBatch",
        "--trainer.callbacks.epoch=1",
        "--trainer.callbacks.batch=9",
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "adapter").exists()
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 10)

    resumed = fit(tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint at" in resumed.stderr + resumed.stdout
    assert_same_adapter(tmp_path, uninterrupted)


def test_kill_during_a_checkpoint_write_keeps_the_previous_last(uninterrupted: Path, tmp_path: Path):
    # Writes so far: step2, last, step4, last, step6, last (on epoch 0's last batch),
    # epoch00-step6, last, best (at the epoch's end), step8, then last again: killed
    # with half of that eleventh file on disk.
    killed = fit(
        tmp_path, "--trainer.callbacks+=tests.helpers.kill_switch.KillDuringSave", "--trainer.callbacks.save=11"
    )
    assert killed.returncode == -signal.SIGKILL
    folder = tmp_path / "checkpoints"
    [partial] = folder.glob("last.ckpt.*.partial")
    assert partial.stat().st_size > 0  # the interrupted write
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 6  # still whole
    assert torch.load(folder / "step8.ckpt", weights_only=False)["global_step"] == 8

    # Resume from an explicit path: the step checkpoint written on epoch 0's last
    # batch, which Lightning resumes at the start of epoch 1 (whose first batches must
    # not be skipped by epoch 0's saved position).
    resumed = fit(tmp_path, "--ckpt_path", str(folder / "step6.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not partial.exists()  # removed by a later save: its writer is dead
    assert_same_adapter(tmp_path, uninterrupted)


def test_sigterm_mid_step_stops_after_the_step_then_resume_from_last_equals_uninterrupted(
    uninterrupted: Path, tmp_path: Path
):
    # Signalled before batch 4, the first micro-batch of optimizer step 3: the run
    # finishes step 3 (batches 4 and 5), writes last.ckpt there, which no step
    # checkpoint (every 2 steps) would, exports nothing and exits 128 + SIGTERM.
    stopped = fit(
        tmp_path,
        "--trainer.callbacks+=tests.helpers.kill_switch.SignalAtBatch",
        "--trainer.callbacks.epoch=0",
        "--trainer.callbacks.batch=4",
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "SIGTERM received: stopped after optimizer step 3" in stopped.stderr + stopped.stdout
    assert not (tmp_path / "adapter").exists()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step2.ckpt"]
    last = torch.load(folder / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, 3)

    resumed = fit(tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_adapter(tmp_path, uninterrupted)
