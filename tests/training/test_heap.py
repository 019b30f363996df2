"""glibc's heap: the settings `python -m lit_lora` starts with, and trimming before each decoder layer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lit_lora.training import heap
from lit_lora.training.heap import (
    HEAP_TUNABLES,
    RESTART_VARIABLE,
    TUNABLES_VARIABLE,
    cuda_visible,
    heap_tuned,
    launched_tuned,
    malloc_trim,
    training_command,
    trim_before_layers,
    tuned_environ,
    uses_glibc,
)
from tests.helpers.tiny import REPO

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


# Started with every interpreter of the probed runs: prints the heap settings it
# started with, and stands in for lit_lora.cli so that nothing heavy runs after the
# restart decision. HEAP_PROBE_NVIDIA names the NVIDIA driver folder to look for.
PROBE = """
import os, sys, types
print("start", os.environ.get("GLIBC_TUNABLES", "-"), flush=True)
if "HEAP_PROBE_NVIDIA" in os.environ:
    from pathlib import Path
    import lit_lora.training.heap
    lit_lora.training.heap._NVIDIA_DRIVER = Path(os.environ["HEAP_PROBE_NVIDIA"])
cli = types.ModuleType("lit_lora.cli")
cli.main = lambda: print("cli torch" if "torch" in sys.modules else "cli", flush=True)
sys.modules["lit_lora.cli"] = cli
"""
TRAINING_COMMANDS_RUN = (["fit"], ["validate", "--config", "x.yaml"], ["test"], ["predict"])
RESTARTED = f"start -\nstart {TUNED}\ncli"
NOT_RESTARTED = "start -\ncli"


@pytest.fixture
def probe(tmp_path):
    """Run a command with the probe started in every interpreter; returns its output."""
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    # No CUDA device, whatever the machine has: the restart's other conditions are tested.
    base = {**without_tunables(), "CUDA_VISIBLE_DEVICES": ""}
    base["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), base.get("PYTHONPATH", "")])

    def run(command: list[str], stdin: str | None = None, **environ: str) -> str:
        env = {**base, **environ}
        for key in [key for key, value in environ.items() if value is None]:
            del env[key]
        done = subprocess.run(command, env=env, input=stdin, capture_output=True, text=True, check=True, cwd=REPO)
        return done.stdout.strip()

    return run


@needs_glibc
def test_training_commands_restart_before_importing_torch_their_help_and_other_commands_do_not(probe):
    module = [sys.executable, "-m", "lit_lora"]
    for command in TRAINING_COMMANDS_RUN:
        assert probe([*module, *command]) == RESTARTED
    for command in (["merge", "--help"], ["estimate", "--config", "x.yaml"], ["--help"], ["fit", "--help"], []):
        assert probe([*module, *command]) == NOT_RESTARTED


@needs_glibc
def test_the_console_script_restarts_too(probe, tmp_path):
    script = tmp_path / "lit-lora"
    script.write_text("import sys\nfrom lit_lora.__main__ import main\nsys.exit(main())\n")
    assert probe([sys.executable, str(script), "fit"]) == RESTARTED
    other = tmp_path / "train.py"
    other.write_text(script.read_text())
    assert probe([sys.executable, str(other), "fit"]) == NOT_RESTARTED


@needs_glibc
def test_code_from_the_command_line_or_standard_input_is_not_restarted(probe):
    code = "from lit_lora.__main__ import main\nmain()\n"
    assert probe([sys.executable, "-c", code, "fit"]) == NOT_RESTARTED
    assert probe([sys.executable, "-", "fit"], stdin=code) == NOT_RESTARTED


@needs_glibc
def test_the_variable_turns_the_restart_off(probe):
    fit = [sys.executable, "-m", "lit_lora", "fit"]
    assert probe(fit, **{RESTART_VARIABLE: "0"}) == NOT_RESTARTED
    assert probe(fit, **{RESTART_VARIABLE: "1"}) == RESTARTED


@needs_glibc
def test_a_visible_cuda_device_keeps_the_heap(probe, tmp_path):
    fit = [sys.executable, "-m", "lit_lora", "fit"]
    assert probe(fit, HEAP_PROBE_NVIDIA=str(tmp_path), CUDA_VISIBLE_DEVICES=None) == NOT_RESTARTED
    # Every device hidden: the run is on CPU after all.
    assert probe(fit, HEAP_PROBE_NVIDIA=str(tmp_path), CUDA_VISIBLE_DEVICES="-1") == RESTARTED


def test_cuda_visibility_is_read_from_the_driver_files_and_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(heap, "_NVIDIA_DRIVER", tmp_path / "driver")
    monkeypatch.setattr(heap, "_NVIDIA_DEVICES", tmp_path)
    assert not cuda_visible({})
    (tmp_path / "nvidiactl").touch()  # the control node alone is no device
    assert not cuda_visible({})
    (tmp_path / "nvidia0").touch()
    assert cuda_visible({})
    assert cuda_visible({"CUDA_VISIBLE_DEVICES": "0"})
    assert not cuda_visible({"CUDA_VISIBLE_DEVICES": ""})
    assert not cuda_visible({"CUDA_VISIBLE_DEVICES": "-1,0"})
    (tmp_path / "nvidia0").unlink()
    (tmp_path / "driver").mkdir()
    assert cuda_visible({})


def test_only_the_training_commands_are_training_commands():
    assert training_command(["fit", "--config", "x.yaml"])
    assert training_command(["predict"])
    assert not training_command(["fit", "-h"])
    assert not training_command(["fit", "--model.help", "lit_lora.LoRAModule"])
    assert not training_command(["generate", "--config", "x.yaml"])
    assert not training_command(["--help"])
    assert not training_command([])


@needs_glibc
def test_the_estimate_assumes_the_settings_when_the_fit_restarts_with_them(monkeypatch, tmp_path):
    monkeypatch.setattr(heap, "_NVIDIA_DRIVER", tmp_path / "driver")
    monkeypatch.setattr(heap, "_NVIDIA_DEVICES", tmp_path)
    assert launched_tuned({})
    assert not launched_tuned({RESTART_VARIABLE: "0"})
    assert launched_tuned({RESTART_VARIABLE: "0", TUNABLES_VARIABLE: TUNED})
    assert not launched_tuned({TUNABLES_VARIABLE: "glibc.malloc.mxfast=128"})
    (tmp_path / "driver").mkdir()
    assert not launched_tuned({})
    assert launched_tuned({"CUDA_VISIBLE_DEVICES": ""})


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
