"""Preemption: a stop signal ends training at the end of the optimizer step in progress with ``last.ckpt``
written and exit status 128 + signal; SLURM's requeue signal also requeues the job; a second signal kills.

The trainer runs in this process on Lightning's BoringModel (one batch of one row
per batch index, accumulation 2) and signals itself (tests.helpers.kill_switch);
the end-to-end run through the CLI, and its exact resume, is in
tests/integration/test_resume.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_lora.callbacks.preemption import Preemption, signal_number
from lit_lora.errors import ConfigError
from tests.helpers.kill_switch import SignalAtBatch

REPO = Path(__file__).resolve().parents[2]


def trainer(root: Path, *callbacks, **kwargs) -> Trainer:
    settings = dict(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=8,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(callbacks=[*callbacks, Preemption()], **{**settings, **kwargs})


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-task SLURM batch job whose ``scontrol`` only records its arguments (no SLURM runs here)."""
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242"}.items():
        monkeypatch.setenv(name, value)
    for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.setenv(name, "0")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.mark.parametrize(("name", "status", "requeued"), [("SIGTERM", 143, ""), ("SIGUSR1", 138, "requeue 4242\n")])
def test_signal_mid_step_finishes_the_step_writes_last_and_exits_nonzero(tmp_path, fake_slurm, name, status, requeued):
    # Signalled before batch 4, the first of step 3's two micro-batches: step 3 ends
    # after batch 5, and only there does the run stop.
    run = trainer(tmp_path, SignalAtBatch(epoch=0, batch=4, name=name))
    with pytest.raises(SystemExit) as stopped:
        run.fit(BoringModel())
    assert stopped.value.code == status
    assert run.global_step == 3
    assert run.fit_loop.epoch_loop.batch_progress.current.completed == 5  # batch 5's end hooks were running
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3
    # SLURM's requeue signal requeues the job (SLURMEnvironment's auto_requeue is on by default); SIGTERM does not.
    assert (fake_slurm.read_text() if fake_slurm.exists() else "") == requeued
    # Lightning's teardown gave the process its handlers back.
    assert signal.getsignal(signal.Signals[name]) is signal.SIG_DFL


def test_without_signal_the_run_ends_normally(tmp_path):
    run = trainer(tmp_path)
    run.fit(BoringModel())
    assert run.global_step == 4
    assert run.state.status == "finished"


def test_a_second_signal_ends_the_process_at_once():
    # The first signal is only recorded; the second kills the process by that signal.
    code = (
        "import os, signal\n"
        "from lit_lora.training.stop_signals import StopSignals\n"
        "stop = StopSignals(forward=lambda signum: print('forwarded', signum, flush=True))\n"
        "stop.install([signal.SIGTERM, signal.SIGUSR1])\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('received', stop.received, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('still running', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM
    assert done.stdout == f"forwarded {int(signal.SIGUSR1)}\nreceived {int(signal.SIGUSR1)}\nforwarded 15\n"


def test_signal_names_are_checked():
    assert signal_number("SIGUSR1") == signal.SIGUSR1
    with pytest.raises(ConfigError, match=r"preemption.signals: 'TERM' is no signal. Fix: use names like SIGTERM"):
        Preemption(signals=["TERM"])


def test_a_trainer_without_model_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="preemption: the trainer has no ModelCheckpoint"):
        trainer(tmp_path, enable_checkpointing=False).fit(BoringModel())
