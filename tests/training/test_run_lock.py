"""The run-folder lock: one holder, its PID and command in the refusal, none left by a killed holder.

The holders are real processes (``flock`` locks belong to an open file, and a
process's own second open of the file would be refused the same way, but the
kernel's release on exit is what matters). The two-``fit`` test is in
``tests/integration/test_two_writers.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lit_lora.errors import ConfigError
from lit_lora.training import run_lock
from tests.helpers.tiny import REPO

# Takes the lock of the folder in argv[1], says so, then waits to be told to go on or
# to be killed.
HOLDER = """
import sys
from lit_lora.training import run_lock
run_lock.acquire(sys.argv[1], command="the holder's command line")
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path):
    """A live process holding ``tmp_path``'s lock."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


@pytest.fixture(autouse=True)
def released():
    yield
    run_lock.release_all()


def test_a_live_holder_is_named_with_its_pid_and_command(tmp_path, holder):
    with pytest.raises(ConfigError) as error:
        run_lock.acquire(tmp_path)
    assert str(error.value) == (
        f"trainer.default_root_dir: {tmp_path.resolve()} is in use by process {holder.pid} (the holder's command "
        f"line), which holds its lock {tmp_path.resolve() / '.lit_lora.lock'}. Two runs in one folder would mix "
        "their checkpoints, logs and adapter: wait for that run to end (or stop it), or set another "
        "trainer.default_root_dir."
    )
    # The refused writer's open cut nothing from the holder's record.
    assert (tmp_path / ".lit_lora.lock").read_text() == f"pid: {holder.pid}\ncommand: the holder's command line\n"


def test_a_lock_left_by_a_killed_holder_does_not_block(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = (tmp_path / ".lit_lora.lock").read_text()
    assert stale == f"pid: {holder.pid}\ncommand: the holder's command line\n"  # no cleanup ran
    path = run_lock.acquire(tmp_path, command="the next run")
    assert path.read_text() == f"pid: {os.getpid()}\ncommand: the next run\n"


def test_a_released_lock_is_free_and_its_file_empty(tmp_path, holder):
    holder.communicate("")  # the holder exits normally
    run_lock.acquire(tmp_path)
    run_lock.release_all()
    assert (tmp_path / ".lit_lora.lock").read_text() == ""
    run_lock.acquire(tmp_path)


def test_the_checkpoint_folder_is_locked_only_outside_the_run_folder(tmp_path, holder):
    inner = {"trainer.default_root_dir": tmp_path / "run", "checkpoint.dirpath": tmp_path / "run" / "checkpoints"}
    assert run_lock.acquire_all(inner) == [(tmp_path / "run" / ".lit_lora.lock").resolve()]
    run_lock.release_all()
    # A checkpoint folder another run holds, outside this run's folder: refused by its setting's name.
    with pytest.raises(ConfigError, match=rf"^checkpoint\.dirpath: {tmp_path.resolve()} is in use by process"):
        run_lock.acquire_all({"trainer.default_root_dir": tmp_path / "other", "checkpoint.dirpath": tmp_path})
    # Nothing stays held after a refusal.
    assert run_lock._held == {}


@pytest.mark.parametrize(
    ("environ", "launching"),
    [
        ({}, True),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),  # Lightning's launching process, once it has launched
        ({"LOCAL_RANK": "1"}, False),  # a process Lightning's launcher started
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # the first process of the second machine
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun
        ({"RANK": "3", "LOCAL_RANK": "0"}, False),
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "2", "LOCAL_RANK": "0"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # Lightning's launcher inside a SLURM job
    ],
)
def test_only_the_launching_process_of_a_run_takes_the_lock(environ, launching):
    assert run_lock.is_launching_process(environ) is launching


def test_a_process_a_launcher_started_takes_no_lock(tmp_path, holder, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_lock.acquire_all({"trainer.default_root_dir": tmp_path}) == []
    assert Path(tmp_path / ".lit_lora.lock").read_text().startswith(f"pid: {holder.pid}\n")
