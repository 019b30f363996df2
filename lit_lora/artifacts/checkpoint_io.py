"""Checkpoint files that are either complete or absent, never half-written.

A run killed while it rewrites ``last.ckpt`` must leave the previous ``last.ckpt``
in place, or the run cannot be resumed at all. Lightning's own writer stages the
file in the system temporary folder and moves it over: on another filesystem (a
``tmpfs`` ``/tmp``, a network checkpoint folder) that move is a copy into the target,
which a kill truncates, and nothing is flushed to disk before the move.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import Strategy

from lit_lora.artifacts.atomic import fsync_folder, partial_path, remove_dead_writers_partials
from lit_lora.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.<pid>.<random>.partial`` next to the target, syncs it to disk, then renames it.

    The rename is atomic within a folder, so readers (and ``--ckpt_path last``) see the
    old file or the new one. The side name is this write's alone, so two writers never
    write into one file (the run lock keeps a second run out of the folder, but a
    checkpoint written by hand, or by a callback, may still meet a run's own). A write
    that fails removes its side file; a killed one leaves it, under a name that no
    checkpoint glob (``*.ckpt``) matches, until the next write of that checkpoint
    removes it (its writer's PID is gone). Remote paths (``s3://``...) keep Lightning's writer, whose
    object-store uploads are atomic already. The file is streamed to disk rather than
    built in memory first, so a checkpoint never needs its own size in extra RAM.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(path)
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        # Make the rename itself durable: it lives in the folder's entry table.
        fsync_folder(path.parent)
        remove_dead_writers_partials(path)


def keep_atomic_writer(strategy: Strategy, plugins: Iterable[Any]) -> None:
    """Make ``strategy`` write checkpoints with :class:`AtomicCheckpointIO`, whatever ``trainer.plugins`` holds.

    ``trainer.plugins`` in a YAML file replaces the whole default list, so the writer is
    not a default there but set here, after the trainer is built. A strategy with a writer
    of its own (DeepSpeed's engine, XLA's) keeps it: only Lightning's plain
    :class:`TorchCheckpointIO` is replaced.

    Args:
        strategy: The trainer's strategy.
        plugins: The instantiated ``trainer.plugins``.

    Raises:
        ConfigError: ``trainer.plugins`` holds another checkpoint writer, which would
            write ``last.ckpt`` in place: a kill mid-write would leave no checkpoint to resume.
    """
    for plugin in plugins:
        if isinstance(plugin, CheckpointIO) and not isinstance(plugin, AtomicCheckpointIO):
            raise ConfigError(
                f"trainer.plugins: {type(plugin).__name__} would replace lit_lora's checkpoint writer "
                "(AtomicCheckpointIO), which writes each checkpoint aside and renames it into place so that a run "
                "killed mid-write still has its previous last.ckpt to resume. Remove it from trainer.plugins, or "
                "subclass lit_lora.artifacts.checkpoint_io.AtomicCheckpointIO."
            )
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
