"""Handing freed heap pages back to the operating system between decoder layers (CPU, glibc).

Eager PyTorch on a CPU allocates and frees every activation, dequantized weight and
temporary through ``malloc``. glibc serves blocks of a few MB from its heap once its
dynamic mmap threshold has risen past them, and the holes they leave between tensors
that live on stay in the resident set: in a SmolLM2-135M QLoRA step with gradient
checkpointing, peak RSS was about 1 GB above the live tensors (see
``lit_lora.memory.retained_bytes``). ``malloc_trim(0)`` gives the whole free pages
inside those holes back (``madvise``) and leaves the heap's layout as it is. Called
before each decoder layer's forward and recomputation (60 calls a step for 30
layers), it took the peak RSS of 6 steps (EPYC, float32, selective checkpointing)
from 3.1-3.3 GB to 2.45-2.5 GB, but each step from 5-6 s to 6.5-8 s: the pages given
back are faulted in again when the heap reuses them. Trimming once before each
backward instead saved nothing. So only full checkpointing, the choice for memory,
trims (``LoRAModule.configure_model``). Fixing the mmap threshold instead returned
more (1.6 GB) but doubled the step time: every large block then costs a system call
and fresh pages.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable

from torch import nn
from torch.utils.hooks import RemovableHandle


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def trim_before_layers(layers: Iterable[nn.Module]) -> list[RemovableHandle]:
    """Return the heap's free pages to the system before each forward of ``layers``.

    A forward pre-hook also runs in checkpointing's recomputation, so the backward
    pass is trimmed layer by layer too. Nothing happens without glibc.

    Args:
        layers: The decoder layers.

    Returns:
        The hooks' handles (empty without glibc).
    """
    trim = malloc_trim()
    if trim is None:
        return []

    def release(module: nn.Module, args: tuple) -> None:
        trim(0)

    return [layer.register_forward_pre_hook(release) for layer in layers]
