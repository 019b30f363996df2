"""glibc's heap in a CPU training process: the settings ``python -m lit_lora`` restarts with, and trimming.

Eager PyTorch on a CPU allocates every activation, dequantized weight and temporary
through ``malloc`` (``posix_memalign``), most of them a few MB and freed within a
layer. How much of the freed memory the process keeps depends on whether glibc can
merge a freed block with its free neighbours, and two of glibc's caches stand in the
way: small freed chunks parked in the per-thread cache (tcache) or the fastbins stay
marked in use, so the free space on either side of them never merges, and a later
block larger than a piece goes to the top of the heap instead. With both caches off
(:data:`HEAP_TUNABLES`) the heap follows the live tensors, the peak RSS of a QLoRA
step drops by about a third and the step is no slower; either cache off alone does
not do it (``docs/memory.md`` has the measurements).

glibc reads its tunables once, when a process starts, so ``python -m lit_lora`` (and
the ``lit-lora`` command) re-executes itself with them before importing torch
(:func:`relaunch_with_tuned_heap`), where that pays (:func:`restart_pays`): for the
training commands (``fit``, ``validate``, ``test``, ``predict``, not their ``--help``),
on a machine where no CUDA device is visible (:func:`cuda_visible`: a GPU run keeps
its tensors in device memory, and a CPU run on a GPU machine then keeps glibc's
defaults unless you set the keys yourself), unless ``LIT_LORA_HEAP_RESTART=0``. Keys
you set in ``GLIBC_TUNABLES`` keep your values
(``glibc.malloc.tcache_count=7:glibc.malloc.mxfast=128``: glibc's defaults). A
program that imports lit_lora, or runs it from ``python -c`` or standard input (which a
restart could not replay), runs with what its own process started with: launch it
with ``GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0`` for the
same heap. The memory estimate counts glibc's retained blocks when a process runs
without them (:func:`heap_tuned`, and :func:`launched_tuned` for a ``fit`` still to
start).

``malloc_trim(0)`` gives the free pages inside the heap back to the system. Full
gradient checkpointing, the choice for memory, trims before each decoder layer
(:func:`trim_before_layers`), which lowers its peak at some cost in time; in the
faster modes the page faults of reusing trimmed pages cost more than the memory is
worth.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.hooks import RemovableHandle

# glibc's tunables variable, "key=value:key=value", read once at process start.
TUNABLES_VARIABLE = "GLIBC_TUNABLES"
# No per-thread cache and no fastbins: every freed chunk can merge with its neighbours.
HEAP_TUNABLES = {"glibc.malloc.tcache_count": "0", "glibc.malloc.mxfast": "0"}
# Set to 0, the command line keeps the heap it was started with.
RESTART_VARIABLE = "LIT_LORA_HEAP_RESTART"
# The subcommands that train or run the model over a dataset in this process.
TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
# What ``fit --help`` and the other training commands' help say about the restart.
RESTART_NOTE = (
    "On a Linux machine without a visible CUDA device, the process restarts itself once, before "
    f"loading anything, with {TUNABLES_VARIABLE}={':'.join(f'{k}={v}' for k, v in HEAP_TUNABLES.items())} "
    "(keys you set yourself keep your values), which keeps glibc's heap near the live tensors; "
    f"{RESTART_VARIABLE}=0 turns the restart off."
)
# The name of the console script (pyproject.toml's [project.scripts]).
CONSOLE_SCRIPT = "lit-lora"
# The NVIDIA driver's files: without them no CUDA device is visible.
_NVIDIA_DRIVER = Path("/proc/driver/nvidia")
_NVIDIA_DEVICES = Path("/dev")


def uses_glibc() -> bool:
    """Whether this process runs on glibc (Linux; not musl, not macOS)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # the name is unknown off glibc
        return False


def _parse(tunables: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in tunables.split(":") if "=" in item)


def tuned_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` whose ``GLIBC_TUNABLES`` also holds :data:`HEAP_TUNABLES`.

    Keys already set keep their values, so a user's own choice wins.

    Args:
        environ: The environment to start a process with.
    """
    current = environ.get(TUNABLES_VARIABLE, "")
    present = _parse(current)
    added = [f"{key}={value}" for key, value in HEAP_TUNABLES.items() if key not in present]
    tuned = dict(environ)
    if added:
        tuned[TUNABLES_VARIABLE] = ":".join([current, *added] if current else added)
    return tuned


def heap_tuned(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a process started with ``environ`` runs glibc with :data:`HEAP_TUNABLES`.

    Args:
        environ: The process's environment (this process's by default).
    """
    present = _parse(environ.get(TUNABLES_VARIABLE, ""))
    return uses_glibc() and all(present.get(key) == value for key, value in HEAP_TUNABLES.items())


def cuda_visible(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a CUDA device may be visible to a process started with ``environ``, without importing torch.

    None is when the NVIDIA driver is absent (no ``/proc/driver/nvidia`` and no
    ``/dev/nvidia<N>``) or when ``CUDA_VISIBLE_DEVICES`` hides every device (empty, or
    starting with ``-1``: CUDA stops at the first invalid index).

    Args:
        environ: The process's environment.
    """
    hidden = environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.split(",")[0].strip() in ("", "-1"):
        return False
    return _NVIDIA_DRIVER.exists() or any(_NVIDIA_DEVICES.glob("nvidia[0-9]*"))


def restart_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the command line may restart itself with :data:`HEAP_TUNABLES` on a machine like this one.

    On glibc, with no CUDA device visible (:func:`cuda_visible`), unless
    ``LIT_LORA_HEAP_RESTART=0``.

    Args:
        environ: The process's environment.
    """
    return uses_glibc() and environ.get(RESTART_VARIABLE, "1").strip() != "0" and not cuda_visible(environ)


def training_command(args: Sequence[str]) -> bool:
    """Whether the command line ``args`` (without the program) runs a training command, not its help.

    Args:
        args: The arguments after the program name.
    """
    positional = [arg for arg in args if not arg.startswith("-")]
    asks_help = any(arg in ("-h", "--help") or arg.endswith(".help") for arg in args)
    return bool(positional) and positional[0] in TRAINING_COMMANDS and not asks_help


def launched_as_command(main: ModuleType | None = None, program: str | None = None) -> bool:
    """Whether this process is ``python -m lit_lora`` or the ``lit-lora`` console script.

    Only those can be re-executed from ``sys.orig_argv`` to the same effect: ``python -c``
    would run its code again from the start, and a program read from standard input
    would find it consumed.

    Args:
        main: The ``__main__`` module (this process's by default).
        program: ``sys.argv[0]`` (this process's by default).
    """
    main = sys.modules["__main__"] if main is None else main
    program = sys.argv[0] if program is None else program
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name == "lit_lora.__main__"
    return Path(program).name == CONSOLE_SCRIPT


def restart_pays(args: Sequence[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the command line should restart itself with :data:`HEAP_TUNABLES` before running ``args``.

    Args:
        args: The arguments after the program name.
        environ: The process's environment.
    """
    return training_command(args) and launched_as_command() and restart_enabled(environ)


def launched_tuned(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``python -m lit_lora fit`` started from ``environ`` runs with :data:`HEAP_TUNABLES`.

    It does when it restarts itself with them (:func:`restart_enabled`) or ``environ``
    has them already, unless a key is set to another value.

    Args:
        environ: The environment it would start with (this process's by default).
    """
    return heap_tuned(tuned_environ(environ) if restart_enabled(environ) else environ)


def relaunch_with_tuned_heap() -> None:
    """Re-execute this process (same PID, arguments and interpreter flags) with :data:`HEAP_TUNABLES`.

    Returns without doing anything off glibc, or when the environment already has
    every key (with our values or the user's). Call it only where re-executing
    ``sys.orig_argv`` runs the same program again (:func:`restart_pays`).
    """
    if not uses_glibc():
        return
    environ = tuned_environ(os.environ)
    if environ.get(TUNABLES_VARIABLE) == os.environ.get(TUNABLES_VARIABLE):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)


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
