"""Returning freed tensor memory to the operating system on Linux (glibc).

PyTorch's CPU allocator takes each tensor from ``malloc``. glibc serves large
requests with ``mmap`` and hands them back on ``free``, but only above a threshold
that it raises, up to 32 MiB, each time such a block is freed: after the first few
training steps, the multi-megabyte activations of a small model come from the heap
instead, where freed memory stays in the process (and fragments). The resident set
then holds the sum of a step's transient tensors, not the live ones. Fixing the
threshold at glibc's initial 128 KiB keeps large tensors on ``mmap`` for good.

Measured on SmolLM2-135M QLoRA, float32, batch 8 x 91 tokens, 2-core CPU: peak RSS
3,980 -> 2,939 MiB without gradient checkpointing, 2,627 -> 1,636 MiB with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameter for the mmap threshold, and its initial value.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold so that freed large tensors leave the process.

    Returns:
        Whether it was set: False off Linux or without glibc (musl, macOS), where
        nothing is changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
