"""Finding where in a local data file a problem is: the 1-based line, what is there, and the fix.

Every check streams the file one line at a time, so a file of millions of examples is
never held in memory as Python objects. The checks (encoding, emptiness, CSV field
counts) run before a file is read; JSON is checked as it is parsed
(``lit_lora.data.read_json``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

from lit_lora.errors import ConfigError

_SNIPPET = 80  # characters of an offending line quoted in an error
# The csv module refuses a field over 128 KiB by default; pandas, which reads the rows, has no such limit.
_FIELD_LIMIT = 2**31 - 1


def shorten(text: str) -> str:
    """The first 80 characters of a text, as an error quotes it, ending in ``...`` when cut."""
    return text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else "")


def snippet(text: str) -> str:
    """A line of a file as an error quotes it: :func:`shorten`, in quotes and escaped."""
    return repr(shorten(text))


def check_text(path: Path, source: str) -> None:
    """Fail unless the file is UTF-8 text with at least one non-blank line.

    Args:
        path: The local file.
        source: Where the file was set (``data.train_file 'x.jsonl'``), named in errors.

    Raises:
        ConfigError: A line is not valid UTF-8, or the file is empty or blank.
    """
    blank = True
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                shown = snippet(raw.decode("utf-8", "replace").rstrip())
                raise ConfigError(
                    f"{source}: line {number} is not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte "
                    f"{error.start + 1} of the line): {shown}. Fix: save the file as UTF-8 (for example "
                    "`iconv -f latin1 -t utf-8 in > out`), or fix that line."
                ) from None
            blank = blank and not line.strip()
    if blank:
        raise ConfigError(f"{source}: the file is empty (or only blank lines). Fix: point it at a file with examples.")


def check_csv_fields(path: Path, source: str) -> None:
    """Fail when a CSV row has more or fewer fields than the header, or there is no row.

    pandas fills a short row's missing fields with ``""``, which would train on an
    empty text nobody wrote; a long row would shift values into the wrong columns.

    Args:
        path: A UTF-8 CSV file with a header row.
        source: Where the file was set, named in errors.

    Raises:
        ConfigError: A row's field count differs from the header's, or there are no rows.
    """
    with path.open(newline="", encoding="utf-8") as file, _long_fields():
        reader = csv.reader(file)
        header = next(reader, [])
        row = 0
        for row, (line, record) in enumerate(_records(reader), start=1):
            if len(record) != len(header):
                raise ConfigError(
                    f"{source}: row {row} (line {line}) has {len(record)} fields but the header has "
                    f"{len(header)} ({', '.join(header)}): {snippet(','.join(record))}. Fix: give every row "
                    "one value per column, quoting values that contain commas or line breaks."
                )
    if row == 0:
        raise ConfigError(f"{source}: the file has a header row but no examples. Fix: add rows below the header.")


@contextmanager
def _long_fields() -> Iterator[None]:
    """Let the csv module read fields of any length, as pandas does, until the block ends."""
    # The limit is process-wide state, so it is restored for whoever else uses the module.
    previous = csv.field_size_limit(_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _records(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """Yield each non-blank CSV record with the line it starts on.

    pandas skips blank lines, which ``csv`` reads as empty records, so row numbers
    must skip them too.
    """
    start = reader.line_num + 1
    for record in reader:
        if record:
            yield start, record
        start = reader.line_num + 1


def json_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield each non-blank line of a UTF-8 file with its 1-based number: the rows of a JSON Lines file.

    Args:
        path: The file.
    """
    # utf-8-sig: a byte-order mark, which some editors write, is no part of the first line.
    with path.open(encoding="utf-8-sig") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                yield number, line


def holds_json_list(path: Path) -> bool:
    """Whether a JSON file holds one list of objects (it starts with ``[``) rather than JSON Lines.

    Args:
        path: A UTF-8 ``.json`` or ``.jsonl`` file.
    """
    _, first = next(json_lines(path), (0, ""))
    return first.lstrip().startswith("[")


def row_location(path: str, index: int) -> str:
    """Say where the row at a 0-based index is, for an error: ``line 7`` or ``row 3 (line 4)``.

    Args:
        path: The file the rows were read from, or a hub dataset id.
        index: The row's 0-based position among the rows read.
    """
    file_path = Path(path).expanduser()
    suffix = file_path.suffix.lower()
    if suffix in (".jsonl", ".json") and file_path.is_file() and not holds_json_list(file_path):
        # Blank lines hold no row, so the index counts only the others.
        line, _ = next(islice(json_lines(file_path), index, None))
        return f"line {line}"
    if suffix == ".csv" and file_path.is_file():
        with file_path.open(newline="", encoding="utf-8") as file, _long_fields():
            reader = csv.reader(file)
            next(reader)
            line, _ = next(islice(_records(reader), index, None))
            return f"row {index + 1} (line {line})"
    return f"row {index + 1}"
