"""The caches of rows read from local files and of tokenized examples, keyed on content, never on a path or a time.

A local file's rows are written once to an Arrow file named by the SHA-256 of the
file's bytes, how it is read (``json``, ``csv``, ``parquet``) and lit_lora's version,
and read back memory-mapped: a large file never sits in memory, and an unchanged one
is never parsed again. ``Dataset.map`` caches the tokenized examples beside that
Arrow file, keyed by it (so by the content) and by the encoder, which carries every
encoding setting and lit_lora's version (see ``TaskDataModule.encoder``). A file
replaced by other bytes, even with the same modification time, is read and tokenized
anew; so is every file after lit_lora is upgraded, as the reading or encoding may
have changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path

import datasets
import pyarrow as pa
from datasets import Dataset

LIT_LORA_VERSION = version("lit_lora")

_BLOCK = 1 << 20  # bytes hashed at a time


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a block at a time, as hex.

    Args:
        path: The file.
    """
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cached_rows(
    path: Path, reader: str, read: Callable[[], tuple[pa.Schema, Iterable[pa.Table | pa.RecordBatch]]]
) -> Dataset:
    """The rows of a local file, read with ``read`` the first time its content is seen, else from the cache.

    The cache lives in ``datasets``' cache folder (``HF_DATASETS_CACHE``), under ``lit_lora_rows``.

    Args:
        path: The file.
        reader: How the file is read, part of the cache key.
        read: Checks the file and returns the schema of its rows and their tables, in order.
    """
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "lit_lora_rows"
    target = folder / f"{reader}-{file_digest(path)}-{LIT_LORA_VERSION}.arrow"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        schema, tables = read()
        # Written aside and renamed into place, so an interrupted write or a concurrent
        # process (another rank) never leaves a partial file under the final name.
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for table in tables:
                    writer.write(table)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return Dataset.from_file(str(target))
