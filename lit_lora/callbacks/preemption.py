"""Preemption: on a scheduler's stop signal, finish the optimizer step, write ``last.ckpt`` and exit non-zero.

Lightning's own handling of SIGTERM stops after the micro-batch in progress (in the
middle of a gradient-accumulation step), writes no checkpoint and exits with status
0, so a scheduler records success and everything since the last step checkpoint is
lost. :class:`Preemption` replaces it for the training loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_lora.errors import ConfigError
from lit_lora.training.stop_signals import StopSignals


class Preemption(Callback):
    """Stop on a scheduler's signal at the end of the optimizer step in progress, resumable with ``--ckpt_path last``.

    On the first signal the run finishes the optimizer step in progress (all its
    micro-batches), writes ``last.ckpt`` at that step into the checkpoint folder
    (atomically, through the trainer's checkpoint writer; rank 0 writes), exports no
    adapter and exits with status ``128 + signal``: 143 for SIGTERM, 138 for SIGUSR1,
    on every rank. The ranks agree on stopping at each step's end, so a signal to one
    process stops them all at the same step. A second signal ends the process at once.

    Under SLURM with ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default
    there), the requeue signal (SIGUSR1, from ``#SBATCH --signal=USR1@<seconds>``) also
    requeues the job with ``scontrol requeue`` once ``last.ckpt`` is written, as
    Lightning's own SLURM handler does; the requeued job resumes with ``--ckpt_path last_if_any``.

    Signals during validation are acted on at the end of the next optimizer step;
    before training starts they end the process as they would without this callback.

    Args:
        signals: Names of the signals that stop the run this way. None: SIGTERM and
            the SLURM requeue signal (SIGUSR1 unless ``SLURMEnvironment(requeue_signal=...)``
            names another). An empty list leaves the signals to Lightning.
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        self.signals = None if signals is None else [signal_number(name) for name in signals]
        self._stop = StopSignals()
        # The global step at which the ranks last agreed on whether to stop.
        self._step = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.signals != [] and checkpoint_callback(trainer) is None:
            raise ConfigError(
                "preemption: the trainer has no ModelCheckpoint, so no last.ckpt can be written where "
                "--ckpt_path last finds it. Fix: keep trainer.enable_checkpointing on, or set preemption.signals: []."
            )
        launcher = trainer.strategy.launcher
        self._stop = StopSignals(forward=launcher.kill if launcher is not None else None)

    # Lightning registers its own handlers just before the sanity check; installing
    # after it replaces them (and its teardown restores the ones from before the run).
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop.install(self._signals(trainer))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop.install(self._signals(trainer))
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Between the micro-batches of an accumulated step the gradients exist only in
        # memory: a step's end is the first point where stopping loses nothing.
        if trainer.global_step == self._step:
            return
        self._step = trainer.global_step
        # Every rank reaches this point at every step, so the collective matches; a
        # process the scheduler signalled tells the others.
        received = torch.tensor(self._stop.received, device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(received, reduce_op="max"))
        if signum:
            self._stop_run(trainer, signum)

    def _signals(self, trainer: Trainer) -> list[int]:
        if self.signals is not None:
            return self.signals
        environment = cluster_environment(trainer)
        requeue = environment.requeue_signal if isinstance(environment, SLURMEnvironment) else signal.SIGUSR1
        return [signal.SIGTERM, requeue]

    def _stop_run(self, trainer: Trainer, signum: int) -> None:
        path = last_checkpoint_path(checkpoint_callback(trainer))
        trainer.save_checkpoint(path)
        rank_zero_info(
            f"lit_lora: {signal.Signals(signum).name} received: stopped after optimizer step {trainer.global_step} "
            f"and saved {path}; resume with --ckpt_path last"
        )
        environment = cluster_environment(trainer)
        requeues = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        if requeues and signum == environment.requeue_signal and trainer.is_global_zero:
            requeue_slurm_job()
        # Lightning's own exception for a signalled stop (a SystemExit), with the status
        # a process killed by the signal would have: the scheduler sees no success.
        raise SIGTERMException(128 + signum)


def signal_number(name: str) -> int:
    """The number of the signal called ``name`` (``SIGTERM``, ``SIGUSR1``...).

    Args:
        name: A signal's name, as in Python's :mod:`signal` module.
    """
    number = signal.Signals.__members__.get(name)
    if number is None:
        raise ConfigError(f"preemption.signals: '{name}' is no signal. Fix: use names like SIGTERM or SIGUSR1.")
    return int(number)


def cluster_environment(trainer: Trainer) -> ClusterEnvironment:
    """The cluster environment the trainer runs in (SLURM, torchrun...), also for a single device.

    Args:
        trainer: The trainer.
    """
    # A single-device strategy does not expose it; Lightning's own signal handling reads it here too.
    return trainer._accelerator_connector.cluster_environment


def checkpoint_callback(trainer: Trainer) -> ModelCheckpoint | None:
    """The first ModelCheckpoint: its folder is where ``--ckpt_path last`` looks.

    Args:
        trainer: The trainer.
    """
    return next((callback for callback in trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)), None)


def last_checkpoint_path(callback: ModelCheckpoint) -> Path:
    """``last.ckpt`` in ``callback``'s folder, the file its ``save_last`` writes.

    Args:
        callback: A ModelCheckpoint whose folder is resolved (after its ``setup``).
    """
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


def requeue_slurm_job() -> None:
    """Put this SLURM job (an array job's own task) back in the queue, as Lightning's SLURM handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        subprocess.run(["scontrol", "requeue", job], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        rank_zero_warn(f"lit_lora: SLURM job {job} was not requeued ({error}); resubmit it with --ckpt_path last.")
        return
    rank_zero_info(f"lit_lora: SLURM job {job} requeued")
