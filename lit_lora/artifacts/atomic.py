"""Building blocks of writes that are complete or absent: a private side name, syncs to disk.

A file or folder is written under a name no other writer uses (:func:`partial_path`),
synced to disk, and renamed onto its final name in the same folder, which is atomic.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(target: str | Path, hidden: bool = False) -> Path:
    """A side name next to ``target`` that only this write uses: ``<name>.<pid>.<random>.partial``.

    The PID tells whose it is; the random part keeps two writes of one process (threads,
    or writers in processes of one PID on two machines sharing the folder) apart.

    Args:
        target: The final path.
        hidden: Start the name with a dot, so that listings and globs (``*.ckpt``,
            ``adapter*``) pass over it.
    """
    target = Path(target)
    name = f"{'.' if hidden else ''}{target.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    return target.with_name(name)


def remove_dead_writers_partials(target: str | Path) -> list[Path]:
    """Delete the side files of ``target`` left by writers that were killed (their PID is gone).

    A live process's side file is never touched, whoever it is. Only PIDs of this
    machine can be checked: the run lock keeps writers of other machines out of a
    run's folder.

    Args:
        target: The final path whose ``<name>.<pid>.<random>.partial`` siblings are looked at.

    Returns:
        The side files removed.
    """
    target = Path(target)
    removed = []
    for partial in target.parent.glob(f"{target.name}.*.*{PARTIAL_SUFFIX}"):
        pid = partial.name[len(target.name) + 1 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def fsync_folder(folder: str | Path) -> None:
    """Make the entries of ``folder`` (a rename into it, new files) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: str | Path) -> None:
    """Sync every file under ``folder``, and the folders' entries, to disk."""
    for directory, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(directory, name), "rb") as file:
                os.fsync(file.fileno())
        fsync_folder(directory)
