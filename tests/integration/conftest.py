"""Runs shared by the multi-device tests: each costs half a minute of two processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.epoch import ROWS, STEP_CHECKPOINTS, fit_epoch
from tests.helpers.tiny import REPO


@pytest.fixture(scope="session")
def epoch_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A training file of 41 quickstart examples, one of 13 others (to mix in), and the
    41 with every other prompt said three times (60-82 and 108-170 tokens: batches that
    mix both are split by length, ``lit_lora.model.length_split``)."""
    folder = tmp_path_factory.mktemp("epoch_data")
    lines = (REPO / "data/quickstart/train.jsonl").read_text().splitlines(keepends=True)
    train, extra, spread = folder / "train.jsonl", folder / "extra.jsonl", folder / "spread.jsonl"
    train.write_text("".join(lines[:ROWS]))
    extra.write_text("".join(lines[ROWS : ROWS + 13]))
    rows = [json.loads(line) for line in lines[:ROWS]]
    for row in rows[1::2]:
        prompt = row["messages"][0]
        prompt["content"] = " ".join([prompt["content"]] * 3)
    spread.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(train), str(extra), str(spread)


@pytest.fixture(scope="session")
def ddp_epoch(tmp_path_factory: pytest.TempPathFactory, epoch_files: tuple[str, str]) -> Path:
    """The run folder of one epoch on two DDP processes (tests.helpers.epoch.fit_epoch)."""
    root = tmp_path_factory.mktemp("ddp_epoch")
    fit_epoch(root, ["--data.train_file", epoch_files[0]], 2, *STEP_CHECKPOINTS)
    return root
