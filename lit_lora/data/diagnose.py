"""Finding where in a local data file a problem is: the 1-based line, what is there, and the fix.

Every check streams the file one line at a time, so a file of millions of examples is
never held in memory as Python objects. The cheap checks (encoding, emptiness, CSV
field counts) run before every load; the JSON parse check runs only once the fast
Arrow reader has failed, to say where and why, which that reader does not.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from lit_lora.errors import ConfigError

_SNIPPET = 80  # characters of an offending line quoted in an error


def _snippet(text: str) -> str:
    return repr(text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else ""))


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
                shown = _snippet(raw.decode("utf-8", "replace").rstrip())
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
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, [])
        row = 0
        for row, (line, record) in enumerate(_records(reader), start=1):
            if len(record) != len(header):
                raise ConfigError(
                    f"{source}: row {row} (line {line}) has {len(record)} fields but the header has "
                    f"{len(header)} ({', '.join(header)}): {_snippet(','.join(record))}. Fix: give every row "
                    "one value per column, quoting values that contain commas or line breaks."
                )
    if row == 0:
        raise ConfigError(f"{source}: the file has a header row but no examples. Fix: add rows below the header.")


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


def find_bad_json(path: Path, source: str) -> ConfigError | None:
    """Locate the first problem in a JSON file that the Arrow reader refused.

    Args:
        path: A ``.jsonl`` file (one object per line) or a ``.json`` file (a list of objects).
        source: Where the file was set, named in the error.

    Returns:
        An error naming the line, what is there and the fix, or ``None`` when every
        line parses, so that the reader's own error is the best there is.
    """
    if path.suffix.lower() == ".json":
        return _find_bad_document(path, source)
    first: dict[str, tuple[str, int]] = {}  # field -> the JSON type it first had, and on which line
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                return ConfigError(
                    f"{source}: line {number} is not valid JSON ({error.msg} at column {error.colno}): "
                    f"{_snippet(line.rstrip())}. Fix: write each line as one complete JSON object, such as "
                    '{"prompt": "...", "completion": "..."}, with line breaks inside strings written as \\n.'
                )
            if not isinstance(value, dict):
                return ConfigError(
                    f"{source}: line {number} is a JSON {type(value).__name__}, not an object: "
                    f"{_snippet(line.rstrip())}. Fix: write each line as one JSON object, such as "
                    '{"prompt": "...", "completion": "..."}.'
                )
            for field, item in value.items():
                if item is None:  # null fits a column of any type
                    continue
                kind, seen = first.setdefault(field, (_kind(item), number))
                if kind != _kind(item):
                    return ConfigError(
                        f"{source}, line {number}: field '{field}' is {type(item).__name__} {repr(item)[:_SNIPPET]}, "
                        f"but line {seen} has a {kind} there. Fix: give the field one type on every line, "
                        "writing text in quotes."
                    )
    return None


def _kind(value: object) -> str:
    # Arrow widens whole numbers to floats in one column, so only other mixes fail.
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def _find_bad_document(path: Path, source: str) -> ConfigError | None:
    # A .json file is one document, so it is parsed whole; use .jsonl for large data.
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return ConfigError(
            f"{source}: line {error.lineno} is not valid JSON ({error.msg} at column {error.colno}). "
            "Fix: correct the JSON there, or save the data as JSON Lines (.jsonl), one object per line."
        )
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return ConfigError(
            f"{source}: the file holds a JSON {type(value).__name__}, not a list of objects. Fix: write "
            'it as [{"prompt": "...", "completion": "..."}, ...], or as JSON Lines (.jsonl).'
        )
    return None


def row_location(path: str, index: int) -> str:
    """Say where the row at a 0-based index is, for an error: ``line 7`` or ``row 3 (line 4)``.

    Args:
        path: The file the rows were read from, or a hub dataset id.
        index: The row's 0-based position among the rows read.
    """
    file_path = Path(path).expanduser()
    suffix = file_path.suffix.lower()
    if suffix == ".jsonl" and file_path.is_file():
        with file_path.open(encoding="utf-8") as file:
            # Blank lines hold no row, so the index counts only the others.
            numbers = (number for number, line in enumerate(file, start=1) if line.strip())
            return f"line {next(islice(numbers, index, None))}"
    if suffix == ".csv" and file_path.is_file():
        with file_path.open(newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            next(reader)
            line, _ = next(islice(_records(reader), index, None))
            return f"row {index + 1} (line {line})"
    return f"row {index + 1}"
