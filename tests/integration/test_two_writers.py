"""Two ``fit`` commands on one run folder: the second stops at once, naming the first.

The first run holds at the start of training, before it has written any checkpoint
(where the old check, a look for ``*.ckpt`` files, let a second run in). Real
processes: the lock is an OS lock, released by the kernel when its holder dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_lora.training import run_lock
from tests.helpers.tiny import REPO, run_tiny, tiny_args

pytestmark = pytest.mark.slow


def listing(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size; the lock file, which a refused run opens, left out."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.name != ".lit_lora.lock"}


def test_a_second_fit_on_a_live_runs_folder_exits_2_at_once_naming_the_first(tmp_path):
    root = tmp_path / "run"
    ready = tmp_path / "ready"
    hold = ("--trainer.callbacks+=tests.helpers.kill_switch.HoldAtStart", f"--trainer.callbacks.ready_file={ready}")
    first = subprocess.Popen(
        [sys.executable, "-m", "lit_lora", *tiny_args("fit", root, *hold)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert not list(root.rglob("*.ckpt"))  # what the old check looked for
        before = listing(root)

        second = run_tiny("fit", root)

        assert second.returncode == 2, second.stderr[-3000:]
        lines = second.stderr.splitlines()
        assert lines[-1].startswith(
            f"lit_lora: error: trainer.default_root_dir: {root} is in use by process {first.pid} ("
        )
        assert f" -m lit_lora fit --config configs/tiny.yaml --trainer.default_root_dir {root} " in lines[-1]
        assert lines[-1].endswith("wait for that run to end (or stop it), or set another trainer.default_root_dir.")
        # Refused before anything was built: no model loaded, no log folder, no file touched.
        assert "parameters" not in second.stderr + second.stdout
        assert listing(root) == before
    finally:
        first.kill()
        first.wait()
    # The killed run's lock does not block the next one.
    try:
        assert run_lock.acquire(root).read_text().startswith(f"pid: {os.getpid()}\n")
    finally:
        run_lock.release_all()
