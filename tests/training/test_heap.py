"""glibc's heap: the settings `python -m lit_lora` starts with, and trimming before each decoder layer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lit_lora.training.heap import (
    HEAP_TUNABLES,
    TUNABLES_VARIABLE,
    heap_tuned,
    malloc_trim,
    trim_before_layers,
    tuned_environ,
    uses_glibc,
)

MIB = 2**20
TUNED = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0"
needs_glibc = pytest.mark.skipif(not uses_glibc(), reason="glibc's heap")

# Nine 64-byte aligned blocks of 1 MiB + 16 bytes, as PyTorch's CPU allocator asks for
# them (posix_memalign), side by side at the top of the heap; the first eight are freed.
# Does a 4 MiB block then fit in their space? Prints the answer.
ALIGNED_BLOCKS = """
import ctypes
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def allocate(size):
    block = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(block), 64, size) == 0
    return block.value
libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: MB blocks from the heap, as once glibc has raised it
blocks = [allocate((1 << 20) + 16) for _ in range(9)]
for block in blocks[:8]:
    libc.free(block)
print(blocks[0] <= allocate(4 << 20) < blocks[8])
"""


def run_python(code: str, environ: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def without_tunables() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != TUNABLES_VARIABLE}


@needs_glibc
def test_freed_aligned_blocks_merge_again_only_with_the_tunables():
    # glibc's defaults: the slivers cut in front of each aligned block sit in tcache and
    # the fastbins, so the freed blocks around them never merge into 4 MiB.
    assert run_python(ALIGNED_BLOCKS, without_tunables()) == "False"
    assert run_python(ALIGNED_BLOCKS, tuned_environ(without_tunables())) == "True"


def test_the_tunables_are_added_and_a_users_own_keys_win():
    assert tuned_environ({"HOME": "/root"}) == {"HOME": "/root", TUNABLES_VARIABLE: TUNED}
    mine = "glibc.malloc.tcache_count=7:glibc.malloc.arena_max=2"
    assert tuned_environ({TUNABLES_VARIABLE: mine})[TUNABLES_VARIABLE] == mine + ":glibc.malloc.mxfast=0"
    assert tuned_environ({TUNABLES_VARIABLE: TUNED})[TUNABLES_VARIABLE] == TUNED


@needs_glibc
def test_heap_tuned_needs_every_setting_at_its_value():
    assert heap_tuned({TUNABLES_VARIABLE: TUNED})
    assert not heap_tuned({TUNABLES_VARIABLE: "glibc.malloc.tcache_count=7:glibc.malloc.mxfast=0"})
    assert not heap_tuned({})
    assert set(HEAP_TUNABLES) == {"glibc.malloc.tcache_count", "glibc.malloc.mxfast"}


@needs_glibc
def test_the_command_line_reexecutes_itself_with_the_tunables_before_importing_torch():
    code = (
        "import os, sys\n"
        "import lit_lora.__main__\n"
        "torch = 'torch' in sys.modules\n"
        "lit_lora.training.heap.relaunch_with_tuned_heap()\n"
        "print(torch, os.environ['GLIBC_TUNABLES'])"
    )
    # Printed once, by the process started again with the settings.
    assert run_python(code, without_tunables()) == f"False {TUNED}"
    mine = {**without_tunables(), TUNABLES_VARIABLE: "glibc.malloc.tcache_count=7"}
    assert run_python(code, mine) == "False glibc.malloc.tcache_count=7:glibc.malloc.mxfast=0"


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
