"""Runs shared by the multi-device tests: each costs half a minute of two processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.epoch import ROWS, STEP_CHECKPOINTS, fit_epoch
from tests.helpers.tiny import REPO


@pytest.fixture(scope="session")
def epoch_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A training file of 41 quickstart examples, and one of 13 others (to mix in)."""
    folder = tmp_path_factory.mktemp("epoch_data")
    lines = (REPO / "data/quickstart/train.jsonl").read_text().splitlines(keepends=True)
    train, extra = folder / "train.jsonl", folder / "extra.jsonl"
    train.write_text("".join(lines[:ROWS]))
    extra.write_text("".join(lines[ROWS : ROWS + 13]))
    return str(train), str(extra)


@pytest.fixture(scope="session")
def ddp_epoch(tmp_path_factory: pytest.TempPathFactory, epoch_files: tuple[str, str]) -> Path:
    """The run folder of one epoch on two DDP processes (tests.helpers.epoch.fit_epoch)."""
    root = tmp_path_factory.mktemp("ddp_epoch")
    fit_epoch(root, ["--data.train_file", epoch_files[0]], 2, *STEP_CHECKPOINTS)
    return root
