"""oneDNN's primitive cache: bounded by `python -m lit_lora`, and the bound taking effect from inside a process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lit_lora.training.kernel_cache import PRIMITIVE_CACHE_CAPACITY, PRIMITIVE_CACHE_VARIABLE, bound_primitive_cache
from tests.helpers.tiny import REPO

# Stands in for lit_lora.cli, so that `python -m lit_lora` prints the capacity its CLI
# would run with and stops.
PRINT_CAPACITY = f"""
import os, sys, types
cli = types.ModuleType("lit_lora.cli")
cli.main = lambda: print(os.environ.get("{PRIMITIVE_CACHE_VARIABLE}", "-"), flush=True)
sys.modules["lit_lora.cli"] = cli
sys.argv = ["lit_lora", "--help"]
import lit_lora.__main__
lit_lora.__main__.main()
"""

# bfloat16 autocast matmuls of 200 different row counts, as batches of 200 lengths make
# them; prints the heap's live bytes in MiB (glibc's mallinfo2) before and after. The
# capacity, when given, is set from inside the process, after torch is imported.
MANY_SHAPES = """
import ctypes, os, sys
import torch
if sys.argv[1] != "-":
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = sys.argv[1]
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
weight = torch.randn(1536, 576)
def step(rows):
    x = torch.randn(rows, 576, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, weight)
    y.float().sum().backward()
step(100)
before = libc.mallinfo2().uordblks
for rows in range(300, 500):
    step(rows)
print((libc.mallinfo2().uordblks - before) / 2**20)
"""


def run_python(code: str, *args: str, environ: dict[str, str] | None = None) -> str:
    """Run ``code`` with ``args`` in a fresh interpreter, by default without a capacity set; returns its output."""
    if environ is None:
        environ = {key: value for key, value in os.environ.items() if key != PRIMITIVE_CACHE_VARIABLE}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=environ, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_bound_primitive_cache_sets_the_capacity_and_keeps_a_users_value():
    environ: dict[str, str] = {}
    bound_primitive_cache(environ)
    assert environ == {PRIMITIVE_CACHE_VARIABLE: str(PRIMITIVE_CACHE_CAPACITY)}
    mine = {PRIMITIVE_CACHE_VARIABLE: "7"}
    bound_primitive_cache(mine)
    assert mine == {PRIMITIVE_CACHE_VARIABLE: "7"}


def test_the_command_line_runs_with_the_bound_unless_the_user_set_one():
    assert run_python(PRINT_CAPACITY) == str(PRIMITIVE_CACHE_CAPACITY)
    assert run_python(PRINT_CAPACITY, environ={**os.environ, PRIMITIVE_CACHE_VARIABLE: "7"}) == "7"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_a_bound_set_inside_the_process_stops_the_cache_growing_with_new_shapes():
    grown = float(run_python(MANY_SHAPES, "-"))
    if grown < 20:
        pytest.skip(f"this CPU's bfloat16 matmuls kept {grown:.1f} MiB for 200 shapes: no per-shape cache to bound")
    bounded = float(run_python(MANY_SHAPES, "16"))
    assert bounded < grown / 2, (bounded, grown)
