"""Reading one split of examples from a local file or a hub dataset, every field exactly as written.

Whether a setting names a local file or a hub dataset (``name`` or ``org/name``,
optionally followed by ``:split``; ``hf://`` in front always means the hub) is the rule
of :mod:`lit_lora.artifacts.location`, shared with the model settings: ``data/foo``
while a ``data/`` folder exists is a missing local file, not a hub dataset.

Local files are read without ``load_dataset``, which asks the hub about the builder
even for a local file: JSON with Python's ``json`` module (``lit_lora.data.read_json``),
so that no string is taken for a date or a number; CSV with pandas, every field a
string; Parquet with pyarrow, each column of the type it was saved with. Rows are
written to Arrow files on disk, cached by the file's content (``lit_lora.data.cache``),
so a second run reads them back at once.

Before reading, a local text file must be UTF-8 and non-empty, and every CSV row
must have one field per header column (``lit_lora.data.diagnose``); a JSON file is
checked line by line as it is parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, load_dataset

from lit_lora.artifacts.location import hub_id
from lit_lora.data.cache import cached_rows
from lit_lora.data.diagnose import check_csv_fields, check_text
from lit_lora.data.read_json import json_tables
from lit_lora.errors import ConfigError

# File extension -> how it is read.
READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

_KNOWN = ", ".join(READERS)
_CSV_ROWS = 10_000  # rows per table read from a CSV file


def is_local(value: str) -> bool:
    """Whether a data setting names a local file rather than a hub dataset id.

    Args:
        value: The setting as the user wrote it.
    """
    return hub_id(value, READERS, with_split=True) is None


def check_data_path(value: str, field: str) -> None:
    """Fail at construction time when a setting that looks local is no readable data file.

    Hub ids are not checked here: that needs the network, so it happens when loading.

    Args:
        value: The setting as the user wrote it.
        field: The config field it came from (``data.train_file``), named in the error.

    Raises:
        ConfigError: The file does not exist, is a folder, or has an unknown extension.
    """
    if not is_local(value):
        return
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{field}: '{value}' does not exist (looked for {path.resolve()}). Fix: point {field} at an "
            f"existing {_KNOWN} file, or at a hub dataset as hf://org/name or hf://org/name:train."
        )
    if not path.is_file() or path.suffix.lower() not in READERS:
        raise ConfigError(
            f"{field}: '{value}' is not a {_KNOWN} file. Fix: save the data in one of those formats "
            f"and point {field} at that file."
        )


def load_split(value: str, field: str, default_split: str) -> Dataset:
    """Load the rows a data setting names, with every text field as written in the file.

    Args:
        value: A local file path, or a hub dataset id with an optional ``:split``.
        field: The config field the value came from, named in errors.
        default_split: The hub split to load when ``value`` names none.

    Raises:
        ConfigError: The file is unreadable or malformed, the hub dataset cannot be
            loaded, or there are no rows.
    """
    check_data_path(value, field)
    if is_local(value):
        rows = _load_file(Path(value).expanduser(), f"{field} '{value}'")
    else:
        name, _, split = hub_id(value, READERS, with_split=True).partition(":")
        split = split or default_split
        try:
            rows = load_dataset(name, split=split)
        except Exception as error:  # offline, unknown id, unknown split: all surface as different types
            raise ConfigError(
                f"{field}: could not load split '{split}' of hub dataset '{name}' ({type(error).__name__}: "
                f"{error}). Fix: check the id and split ('name:split'), that the hub can be reached or the "
                f"dataset is cached, or point {field} at a local {_KNOWN} file."
            ) from error
    if len(rows) == 0:
        raise ConfigError(f"{field}: '{value}' has no rows. Fix: point {field} at a file with examples.")
    return rows


def _load_file(path: Path, source: str) -> Dataset:
    reader = READERS[path.suffix.lower()]
    try:
        return cached_rows(path, reader, lambda: _tables(path, reader, source))
    except ConfigError:
        raise
    except Exception as error:  # pandas and pyarrow each raise their own types for a malformed file
        raise ConfigError(
            f"{source}: could not read the file ({type(error).__name__}: {error}). Fix: make it valid JSON "
            "Lines (one object per line), a JSON list of objects, a CSV file with a header row, or a "
            "Parquet file."
        ) from error


def _tables(path: Path, reader: str, source: str) -> tuple[pa.Schema, Iterator[pa.Table | pa.RecordBatch]]:
    """Check a file, then return the schema of its rows and their tables in file order, read as consumed."""
    if reader == "parquet":
        file = pq.ParquetFile(path)
        return file.schema_arrow, file.iter_batches()
    check_text(path, source)
    if reader == "json":
        return json_tables(path, source)
    check_csv_fields(path, source)
    # pandas would read "00123" as 123, "NA" and "" as NaN and "True" as a bool;
    # typing every column as a string and turning NA detection off keeps each field
    # byte-exact. The header is read with the same parser so the names match.
    schema = pa.schema([(name, pa.string()) for name in pd.read_csv(path, nrows=0).columns])
    chunks = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, chunksize=_CSV_ROWS)
    return schema, (pa.Table.from_pandas(chunk, schema=schema, preserve_index=False) for chunk in chunks)


def check_split_files(
    train_file: str | None, val_file: str | None, val_fraction: float, test_file: str | None, predict_file: str | None
) -> None:
    """Check a data module's file settings, naming the setting at fault, before any work.

    Raises:
        ConfigError: A local file is missing, ``val_fraction`` is outside [0, 1), or it
            is set together with ``val_file``.
    """
    for field, value in (
        ("data.train_file", train_file),
        ("data.val_file", val_file),
        ("data.test_file", test_file),
        ("data.predict_file", predict_file),
    ):
        if value is not None:
            check_data_path(value, field)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: {val_fraction} is outside [0, 1). Fix: use e.g. 0.05, or 0 for none.")
    if val_file is not None and val_fraction > 0:
        raise ConfigError(
            f"data.val_fraction: {val_fraction} is set together with data.val_file '{val_file}'. "
            "Fix: set only one of them."
        )
