"""Reading data files: byte-exact text, and errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_lora.data.files import check_data_path, is_local, load_split
from lit_lora.errors import ConfigError
from tests.helpers.sft import write_csv, write_jsonl

# Values a CSV or JSON reader likes to "helpfully" convert or trim.
TRICKY = [
    {"prompt": "00123", "completion": "NA"},
    {"prompt": " leading space", "completion": "trailing\n"},
    {"prompt": "True", "completion": ""},
    {"prompt": "null", "completion": "1.50"},
    {"prompt": "  \n\t", "completion": "nan"},
]


def _write(path: Path, rows: list[dict]) -> str:
    if path.suffix == ".csv":
        return write_csv(path, rows)
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_fields_arrive_byte_exact(tmp_path: Path, suffix: str) -> None:
    rows = load_split(_write(tmp_path / f"train{suffix}", TRICKY), "data.train_file", "train")
    assert rows.to_list() == TRICKY


def test_hub_ids_and_paths_are_told_apart() -> None:
    assert not is_local("HuggingFaceTB/smoltalk")
    assert not is_local("tatsu-lab/alpaca:train")
    assert is_local("train.jsonl")
    assert is_local("./train")
    assert is_local("data/sets/train")


def test_missing_file_names_field_file_and_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"data\.val_file: 'nope/missing\.jsonl' does not exist .* Fix: point data\.val_file"
    ):
        check_data_path("nope/missing.jsonl", "data.val_file")


def test_unknown_extension_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("hello")
    with pytest.raises(
        ConfigError, match=r"data\.train_file: '.*train\.txt' is not a \.jsonl, \.json, \.csv, \.parquet file"
    ):
        check_data_path(str(path), "data.train_file")


def test_hub_ids_are_not_checked_at_construction() -> None:
    check_data_path("org/name:train", "data.train_file")


def test_a_csv_field_over_the_csv_module_limit_is_read_whole(tmp_path: Path) -> None:
    # 300 KiB, over the 128 KiB the csv module (which checks the rows) allows by default.
    long = 'word, "quoted"\nnext line ' * 12_288
    rows = [{"prompt": "Hi", "completion": long}, {"prompt": long, "completion": "ok"}]
    assert len(long) == 300 * 1024
    assert load_split(write_csv(tmp_path / "long.csv", rows), "data.train_file", "train").to_list() == rows


def test_parquet_string_columns_stay_strings(tmp_path: Path) -> None:
    rows = [
        {"prompt": "When?", "completion": "1999-12-31", "time": "10:00:00", "id": "00123"},
        {"prompt": "And?", "completion": "2024-02-29T10:00:00", "time": "23:59", "id": "1e5"},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    read = load_split(str(path), "data.train_file", "train")
    assert {name: feature.dtype for name, feature in read.features.items()} == dict.fromkeys(rows[0], "string")
    assert read.to_list() == rows
