"""One writer per run folder: an OS file lock held for the life of a command.

Two ``fit`` commands on one ``trainer.default_root_dir`` would mix their checkpoints,
logs and ``adapter/``. The first takes an exclusive ``flock`` on ``.lit_lora.lock`` in
the folder and writes its PID and command line into it; the second finds the lock
taken and stops at once, quoting them. The kernel releases a ``flock`` when its
holder exits, however it exits (``kill -9`` included), so a lock file left by a
killed run never blocks: its stale content is simply overwritten by the next holder.
The file itself is never deleted: unlinking a lock file another process has just
opened would let two processes lock two different files of the same name.

Under data parallelism only one process of the run takes the lock, the one of
global rank 0 (:func:`is_launching_process`), before any process group exists: the
processes Lightning's launcher starts re-run the command line with ``LOCAL_RANK``
set, and torchrun sets ``RANK`` in every process.

``flock`` is advisory and local to one machine's kernel (NFS emulates it with
whole-file locks on Linux); it keeps out lit_lora commands, not other programs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from lit_lora.errors import ConfigError

LOCK_NAME = ".lit_lora.lock"

# Held locks by folder: a process holds each run folder's lock at most once, and
# :func:`release_all` lets the CLI release them whatever way the command ended.
_held: dict[Path, int] = {}


def is_launching_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0, or no launcher has started it.

    torchrun sets ``RANK`` in every process, SLURM's ``srun`` sets ``SLURM_PROCID``;
    Lightning's own launcher starts the other local processes with ``LOCAL_RANK``
    (and ``NODE_RANK`` on other machines) set, and they inherit the launching
    process's ``SLURM_PROCID`` when it runs in a SLURM job: any rank that is not 0
    makes a process one that a launcher started.

    Args:
        environ: The environment to read; this process's when None.
    """
    env = os.environ if environ is None else environ
    if env.get("RANK"):
        return int(env["RANK"]) == 0
    ranks = ("SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    return all(int(env.get(variable) or 0) == 0 for variable in ranks)


def _holder(descriptor: int) -> str:
    """What the lock file's holder wrote into it (PID and command), as one phrase."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    lines = os.read(descriptor, 65536).decode(errors="replace").splitlines()
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    if "pid" not in fields:
        return "another process (it has not written its PID yet)"
    return f"process {fields['pid']} ({fields.get('command', 'command unknown')})"


def acquire(folder: str | Path, field: str = "trainer.default_root_dir", command: str | None = None) -> Path:
    """Take the run lock of ``folder`` (created when missing), or fail naming its holder.

    Args:
        folder: The run folder (``trainer.default_root_dir``) or checkpoint folder.
        field: The setting that names ``folder``, quoted in the error.
        command: What to record as the holder's command; this process's command line when None.

    Returns:
        The lock file's path.

    Raises:
        ConfigError: Another live process holds the lock.
    """
    folder = Path(folder).resolve()
    path = folder / LOCK_NAME
    if folder in _held:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: the holder's record must survive a refused writer's open.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _holder(descriptor)
        os.close(descriptor)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise ConfigError(
            f"{field}: {folder} is in use by {holder}, which holds its lock {path}. "
            "Two runs in one folder would mix their checkpoints, logs and adapter: wait for that run to end "
            f"(or stop it), or set another {field}."
        ) from None
    record = command if command is not None else shlex.join(sys.orig_argv)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid: {os.getpid()}\ncommand: {record}\n".encode(), 0)
    _held[folder] = descriptor
    return path


def acquire_all(folders: Mapping[str, str | Path]) -> list[Path]:
    """Take the lock of each of ``folders`` in the launching process (see :func:`is_launching_process`).

    Args:
        folders: The run and checkpoint folders by the setting that names them; a folder
            inside another one is covered by the outer one's lock.

    Returns:
        The lock files taken; none in a process a launcher started.
    """
    if not is_launching_process():
        return []
    resolved = {Path(folder).resolve(): field for field, folder in folders.items()}
    outer = {f: field for f, field in resolved.items() if not any(other in f.parents for other in resolved)}
    try:
        return [acquire(folder, field) for folder, field in outer.items()]
    except BaseException:
        release_all()
        raise


def release_all() -> None:
    """Release every run lock this process holds (the file stays, emptied)."""
    while _held:
        _, descriptor = _held.popitem()
        # Emptied while still locked: a later holder's record is never cut.
        os.ftruncate(descriptor, 0)
        os.close(descriptor)
