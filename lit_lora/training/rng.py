"""Capturing and restoring every random number generator a training step draws from.

Lightning checkpoints the loops, optimizer and scheduler but not the RNGs, so a
resumed run would draw other dropout masks than the uninterrupted one. The states
are stored as tensors and plain lists, which ``torch.load(weights_only=True)`` reads,
one set per device: devices' generators need not agree (CUDA generators differ by
device), and each must resume from its own.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def rng_states() -> dict[str, Any]:
    """The states of torch's CPU and CUDA generators, Python's ``random`` and NumPy's."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA only where it was captured)."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def store_rng_states(checkpoint: dict[str, Any]) -> None:
    """Put every process's :func:`rng_states` into ``checkpoint``; a collective under distribution.

    ``rng_states`` holds rank 0's states (all a single-process run has), and
    ``rng_states_by_rank`` every rank's, in global rank order, when there are several.
    Every process must call it at the same point: Lightning dumps a checkpoint on
    every rank and writes it from rank 0.
    """
    states = rng_states()
    checkpoint["rng_states"] = states
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, states)
        checkpoint["rng_states"], checkpoint["rng_states_by_rank"] = gathered[0], gathered


def stored_rng_states(checkpoint: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """This rank's states from what :func:`store_rng_states` stored; ``None`` when it stored none.

    A checkpoint of a run on fewer devices gives rank 0's states to the ranks it lacks.

    Args:
        checkpoint: The loaded checkpoint.
        rank: This process's global rank.
    """
    by_rank = checkpoint.get("rng_states_by_rank") or []
    return by_rank[rank] if rank < len(by_rank) else checkpoint.get("rng_states")
