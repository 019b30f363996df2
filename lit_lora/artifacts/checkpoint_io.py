"""Checkpoint files that are either complete or absent, never half-written.

A run killed while it rewrites ``last.ckpt`` must leave the previous ``last.ckpt``
in place, or the run cannot be resumed at all. Lightning's own writer stages the
file in the system temporary folder and moves it over: on another filesystem (a
``tmpfs`` ``/tmp``, a network checkpoint folder) that move is a copy into the target,
which a kill truncates, and nothing is flushed to disk before the move.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.partial`` next to the target, syncs it to disk, then renames it.

    The rename is atomic within a folder, so readers (and ``--ckpt_path last``) see the
    old file or the new one. Remote paths (``s3://``...) keep Lightning's writer, whose
    object-store uploads are atomic already. The file is streamed to disk rather than
    built in memory first, so a checkpoint never needs its own size in extra RAM.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        # Make the rename itself durable: it lives in the folder's entry table.
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
