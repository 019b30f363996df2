"""Handing freed heap pages back to the system before each decoder layer (glibc)."""

from __future__ import annotations

import os

import pytest
import torch

from lit_lora.model.heap import malloc_trim, trim_before_layers

MIB = 2**20


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_a_layer_forward_gives_the_holes_between_live_tensors_back():
    # A freed 8 MiB block raises glibc's mmap threshold past it, so the 1 MiB blocks
    # below come from the heap, as a training step's activations do.
    big = torch.ones(8 * MIB, dtype=torch.uint8)
    del big
    blocks = [torch.ones(MIB, dtype=torch.uint8) for _ in range(256)]
    del blocks[::2]  # 128 MiB of holes, each pinned between two live blocks
    layer = torch.nn.Identity()
    handles = trim_before_layers([layer])
    assert len(handles) == 1
    before = resident_bytes()
    layer(torch.zeros(1))
    assert before - resident_bytes() > 64 * MIB
    assert len(blocks) == 128  # the live blocks are untouched
