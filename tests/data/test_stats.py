"""Dataset statistics: counts, truncation, drops, length percentiles and the supervised share."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from datasets import Dataset

from lit_lora.data import SFTDataModule
from lit_lora.data.stats import SplitStats, format_stats, split_stats
from tests.helpers.sft import write_jsonl

# Plain template, word-level tokens: "<s> {prompt} {completion} </s>", the completion and
# </s> trained. With max_length 5, the third row keeps no trained token and the fourth
# is cut after "no".
ROWS = [
    {"prompt": "Hi", "completion": "Hello"},  # 4 tokens, 2 supervised
    {"prompt": "Hi", "completion": "Hello there"},  # 5 tokens, 3 supervised
    {"prompt": "Hi Hi Hi Hi", "completion": "ok"},  # 7 tokens cut to 5, none supervised: dropped
    {"prompt": "Hi Hi", "completion": "yes no ok"},  # 7 tokens cut to 5, 2 supervised: truncated
    {"prompt": "Sum", "completion": "1"},  # 4 tokens, 2 supervised
]

EXPECTED = SplitStats(rows=5, kept=4, truncated=1, lengths=(4, 5, 5), max_length=5, tokens=18, supervised=9)


@pytest.fixture
def datamodule(tmp_path: Path, plain_path: str) -> SFTDataModule:
    return SFTDataModule(write_jsonl(tmp_path / "train.jsonl", ROWS), max_length=5, tokenizer_name_or_path=plain_path)


def test_statistics_of_a_split_count_drops_truncation_lengths_and_supervision(datamodule: SFTDataModule) -> None:
    with pytest.warns(UserWarning, match="dropped 1 of 5 examples"):
        datamodule.setup("fit")
    stats = datamodule.stats["train"]
    assert stats == EXPECTED
    assert stats.dropped == 1 == datamodule.dropped["train"]
    assert stats.supervised_fraction == 0.5
    assert len(datamodule.dataset("train")) == stats.kept


def test_percentiles_are_the_shortest_length_that_covers_the_share() -> None:
    # Lengths 1..10: half the examples are at most 5 tokens long, 90% at most 9.
    examples = Dataset.from_dict(
        {
            "input_ids": [[0] * length for length in range(1, 11)],
            "num_supervised": [1] * 10,
            "truncated": [False] * 10,
        }
    )
    assert split_stats(examples).lengths == (5, 9, 10)
    # Only the rows of the split count: a held-out validation part of a file.
    assert split_stats(examples, rows=[9, 0, 2]) == SplitStats(
        rows=3, kept=3, truncated=0, lengths=(3, 10, 10), max_length=10, tokens=14, supervised=3
    )


def test_a_split_with_nothing_kept_has_zero_lengths() -> None:
    examples = Dataset.from_dict({"input_ids": [[1, 2]], "num_supervised": [0], "truncated": [True]})
    stats = split_stats(examples)
    assert stats == SplitStats(rows=1, kept=0, truncated=0, lengths=(0, 0, 0), max_length=0, tokens=0, supervised=0)
    assert stats.supervised_fraction == 0.0


def test_the_table_has_a_row_per_split() -> None:
    table = format_stats({"train": EXPECTED, "validation": EXPECTED}).splitlines()
    assert table[:3] == [
        "split       rows  kept  dropped  truncated  p50  p90  p99  max  supervised",
        "train          5     4        1          1    4    5    5    5       50.0%",
        "validation     5     4        1          1    4    5    5    5       50.0%",
    ]


@pytest.mark.filterwarnings("ignore:.*dropped 1 of 5 examples")
def test_fit_setup_logs_the_statistics(datamodule: SFTDataModule, caplog: pytest.LogCaptureFixture) -> None:
    # Lightning's logger prints to the console itself and does not propagate to the root.
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    try:
        datamodule.setup("fit")
    finally:
        logger.removeHandler(caplog.handler)
    assert f"Data statistics:\n{format_stats({'train': EXPECTED})}" in caplog.messages
