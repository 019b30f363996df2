"""``--ckpt_path``, checked before any model is built.

A wrong checkpoint used to fail with a traceback after the base model had been
loaded (a truncated file, a safetensors file, something else), ``last`` with
nothing to resume trained from scratch with a warning, and an ``http(s)://`` path
was unpickled by Lightning with ``weights_only=False``, which runs whatever code the
file holds. Here, before anything is built:

- ``last`` (Lightning's meaning: the newest ``last*.ckpt`` in the checkpoint
  callbacks' folders) must find a checkpoint, else it is an error naming the folders
  looked in. ``last_if_any`` is ``last`` when there is one and a fresh start when
  there is none, for scripts that run one command on the first start and on each
  requeue (SLURM).
- ``best`` is refused with the file to pass: Lightning's ``best`` is the best
  checkpoint of a ``fit`` in the same process, which a command line never has.
- ``hpc`` (Lightning's SLURM checkpoint, the newest ``hpc_ckpt_N.ckpt`` in
  ``trainer.default_root_dir``) must find one.
- A URL (``scheme://``) is refused: lit_lora reads local files only. Download the
  checkpoint first.
- The file must exist and be a Lightning checkpoint, read with ``torch.load(...,
  weights_only=True, mmap=True)`` (cheap: tensors stay on disk): not truncated, not a
  safetensors file, and for ``fit`` holding the optimizer and loop state a resume needs.
- What it was trained on must be what this run configures
  (:mod:`lit_lora.model.trained_on`).

An adapter folder as ``--ckpt_path`` is left to ``LitLoraCLI``, which checks it
against its ``training_config.yaml``; ``model.adapter_path`` on another base only
warns (:func:`~lit_lora.model.trained_on.adapter_base_warning`).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_warn

from lit_lora.artifacts.adapter_dir import is_adapter_dir
from lit_lora.errors import ConfigError

LAST_IF_ANY = "last_if_any"

# Lightning's names: ModelCheckpoint's "last" files (its pattern matches any stem that
# starts with "last": last.ckpt, last-v1.ckpt) and its SLURM "hpc" checkpoints.
_LAST = re.compile(r"^last.*\.ckpt$")
_HPC = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# The keys every Lightning checkpoint has, and those a resume needs besides.
_LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")
_RESUME_KEYS = ("optimizer_states", "loops")
_CALLBACKS = ("checkpoint", "step_checkpoint", "best_checkpoint")


def check_run_sources(subcommand: str, config: Namespace, folder: Path) -> None:
    """Check ``ckpt_path`` and ``model.adapter_path`` of a parsed command before anything is built.

    Resolves ``last_if_any`` in ``config`` to ``last`` or None.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        config: The subcommand's parsed config.
        folder: Where the run's checkpoints go (``lit_lora.cli.checkpoint_folder``).

    Raises:
        ConfigError: The checkpoint cannot be read, is no Lightning checkpoint, has
            nothing to resume, or was trained on other settings than this run's.
    """
    from lit_lora.model.trained_on import adapter_base_warning, check_checkpoint_settings

    init_args = config.model.init_args.as_dict()
    warning = adapter_base_warning(init_args)
    if warning is not None:
        rank_zero_warn(warning)
    value = config.get("ckpt_path")
    if value is None or is_adapter_dir(value):
        return
    path = checkpoint_file(str(value), subcommand, config, folder)
    if path is None:
        config.ckpt_path = None
        return
    if value == LAST_IF_ANY:
        config.ckpt_path = "last"
    check_checkpoint_settings(path, read_checkpoint(path, resume=subcommand == "fit"), init_args)


def checkpoint_file(value: str, subcommand: str, config: Namespace, folder: Path) -> Path | None:
    """The file ``--ckpt_path value`` makes Lightning load, or None for ``last_if_any`` with none.

    Args:
        value: ``--ckpt_path`` as given.
        subcommand: The command it is given to.
        config: The subcommand's parsed config.
        folder: Where the run's checkpoints go.

    Raises:
        ConfigError: A URL, ``best``, or ``last``/``hpc`` with nothing to load.
    """
    if _URL.match(value):
        raise ConfigError(
            f"ckpt_path: '{value}' is a URL; lit_lora loads local checkpoint files only (Lightning would unpickle "
            "a remote one with weights_only=False, which runs any code it holds). Fix: download it and pass the "
            "local file."
        )
    if value == "best":
        raise ConfigError(
            f"ckpt_path: 'best' means the best checkpoint of a fit in this same process, which a command line "
            f"never has. Fix: pass the file, e.g. {folder / 'best.ckpt'} (written by best_checkpoint)."
        )
    if value in ("last", LAST_IF_ANY):
        folders = sorted({Path(config.get(f"{name}.dirpath") or folder) for name in _CALLBACKS}, key=str)
        found = [path for each in folders if each.is_dir() for path in each.iterdir() if _LAST.match(path.name)]
        if found:
            return max(found, key=lambda path: path.stat().st_mtime)
        if value == LAST_IF_ANY and subcommand == "fit":
            return None
        looked = ", ".join(str(each.resolve()) for each in folders)
        raise ConfigError(
            f"ckpt_path: '{value}', but there is no last.ckpt to load in {looked}. Fix: check "
            "trainer.default_root_dir (and checkpoint.dirpath) against the run to resume, or start without "
            f"--ckpt_path; a script run both first and on each requeue can pass --ckpt_path {LAST_IF_ANY} to fit."
        )
    if value == "hpc":
        root = Path(config.trainer.default_root_dir or ".")
        found = [path for path in root.glob("hpc_ckpt_*.ckpt") if _HPC.match(path.name)]
        if not found:
            raise ConfigError(f"ckpt_path: 'hpc', but there is no hpc_ckpt_N.ckpt in {root.resolve()}.")
        return max(found, key=lambda path: int(_HPC.match(path.name)[1]))
    return Path(value).expanduser()


def read_checkpoint(path: Path, resume: bool) -> dict[str, Any]:
    """Load a checkpoint's contents cheaply and safely, failing with the reason when it is no Lightning checkpoint.

    Args:
        path: The checkpoint file.
        resume: Whether ``fit`` resumes from it (it then needs optimizer and loop state).

    Raises:
        ConfigError: The file is missing, unreadable, truncated, a safetensors file or
            no Lightning checkpoint, naming the file and the fix.
    """
    import torch

    # Registers the settings dataclasses that hyperparameters may hold as safe to unpickle.
    import lit_lora.model.base  # noqa: F401

    if not path.is_file():
        what = "is a folder without adapter_config.json" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"ckpt_path: '{path}' {what} (looked for {path.resolve()}). Fix: pass a .ckpt file written by fit, "
            "'last' to resume the run in trainer.default_root_dir, or an exported adapter folder."
        )
    if is_safetensors(path):
        raise ConfigError(
            f"ckpt_path: '{path}' is a safetensors file (weights only, like an adapter's "
            "adapter_model.safetensors), not a Lightning checkpoint. Fix: pass a .ckpt file written by fit; "
            "for an exported adapter pass its folder (validate/test/predict) or set model.init_args.adapter_path "
            "to it (fit)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError... by what is wrong
        raise ConfigError(
            f"ckpt_path: '{path}' cannot be read as a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); it is truncated, damaged or not a torch file. "
            "Fix: pass another checkpoint, e.g. an earlier one from the same checkpoints folder."
        ) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _LIGHTNING_KEYS):
        raise ConfigError(
            f"ckpt_path: '{path}' is a torch file but not a Lightning checkpoint (no "
            f"{' or '.join(_LIGHTNING_KEYS)}). Fix: pass a .ckpt file written by fit."
        )
    missing = [key for key in _RESUME_KEYS if resume and key not in checkpoint]
    if missing:
        raise ConfigError(
            f"ckpt_path: '{path}' holds weights but no optimizer or loop state to resume (no {', '.join(missing)}). "
            "Fix: resume from a checkpoint written by fit (last.ckpt, stepN.ckpt), or validate/test it instead."
        )
    return checkpoint


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: a little-endian header length, then a JSON object."""
    with path.open("rb") as file:
        head = file.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length <= path.stat().st_size - 8
