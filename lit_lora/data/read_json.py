"""Reading JSON Lines and JSON files with Python's ``json`` module, so that every string stays the string written.

Arrow's JSON reader types a column by what its strings look like: completions that
are all ISO dates (``"1999-12-31"``) come back as timestamps. Here every value keeps
its JSON type: a quoted string is that string, byte for byte, and a number a number
(which a text field then refuses, rather than turning it into text).

A file whose first non-blank character is ``[`` holds one JSON list of objects, which
is parsed whole and whose objects are named ``row N``; any other file is JSON Lines,
one object per line (blank lines are skipped), read a line at a time and named by
its 1-based ``line N``.

A field keeps the Arrow type of its values when that is one type on every line
(whole and fractional numbers widen to floats, and null fits any type). A field whose
values differ in type, a string in one line and a list in another, is stored as
JSON text, each value read back as it was written (``datasets``' ``Json`` feature),
so that the check of the field names the line whose value does not fit.

The file is read twice, streamed: a first pass checks every object and finds each
field's type, a second builds Arrow tables of a few MiB at a time. So a large JSON
Lines file never sits in memory whole, as text or as Python objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from lit_lora.data.diagnose import holds_json_list, json_lines, shorten, snippet
from lit_lora.errors import ConfigError

# A table is built once its lines add up to this many characters, or rows to _ROWS.
_CHUNK_CHARS = 8 << 20
_ROWS = 10_000

Record = tuple[dict[str, Any], int]  # one object of a file and the characters it took

# Python type of a parsed JSON value -> its JSON name; bool before int, which it subclasses.
_KINDS = {str: "string", bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}


class _Type:
    """The JSON type a field has had so far; ``None`` while it has only been null, ``json`` once it has had two."""

    __slots__ = ("fields", "integer", "item", "kind")

    def __init__(self) -> None:
        self.kind: str | None = None
        self.integer = True  # a number field with only whole numbers so far
        self.item: _Type | None = None  # of a list's items
        self.fields: dict[str, _Type] = {}  # of an object's fields, in the order first seen


class _Conflict(Exception):
    """A value whose type differs from the one its field has had."""


def _merge(known: _Type, value: Any) -> None:
    """Fold one value into its field's type, recursing into lists and objects."""
    if value is None:  # null fits a field of any type, as a missing key does
        return
    kind = _KINDS[type(value)]
    if known.kind is None:
        known.kind = kind
    elif known.kind != kind:
        raise _Conflict
    if kind == "number":
        known.integer = known.integer and isinstance(value, int)
    elif kind == "list":
        known.item = known.item or _Type()
        for item in value:
            _merge(known.item, item)
    elif kind == "object":
        for name, item in value.items():
            _merge(known.fields.setdefault(name, _Type()), item)


def _arrow_type(known: _Type | None) -> pa.DataType:
    if known is None or known.kind is None:
        return pa.null()
    if known.kind == "json":
        return pa.json_()
    if known.kind == "list":
        return pa.list_(_arrow_type(known.item))
    if known.kind == "object":
        return pa.struct([pa.field(name, _arrow_type(field)) for name, field in known.fields.items()])
    if known.kind == "number":
        return pa.int64() if known.integer else pa.float64()
    return pa.string() if known.kind == "string" else pa.bool_()


def json_tables(path: Path, source: str) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """Check a JSON or JSON Lines file and return its schema and its rows as Arrow tables.

    Args:
        path: A UTF-8 ``.jsonl`` or ``.json`` file.
        source: Where the file was set (``data.train_file 'x.jsonl'``), named in errors.

    Returns:
        The schema, each field typed as its values are in the file (JSON text where
        they differ in type), and the tables of the rows in file order, read as they
        are consumed.

    Raises:
        ConfigError: A line is not valid JSON, or not an object, naming the line and the fix.
    """
    fields: dict[str, _Type] = {}
    for row, _ in _records(path, source):
        for name, value in row.items():
            known = fields.setdefault(name, _Type())
            if known.kind != "json":
                try:
                    _merge(known, value)
                except _Conflict:
                    known.kind = "json"
    schema = pa.schema([pa.field(name, _arrow_type(known)) for name, known in fields.items()])
    return schema, _tables(path, source, schema)


def _tables(path: Path, source: str, schema: pa.Schema) -> Iterator[pa.Table]:
    as_json = [field.name for field in schema if field.type == pa.json_()]
    chunk: list[dict[str, Any]] = []
    chars = 0
    for row, length in _records(path, source):
        for name in as_json:
            if row.get(name) is not None:
                row[name] = json.dumps(row[name])
        chunk.append(row)
        chars += length
        if chars >= _CHUNK_CHARS or len(chunk) >= _ROWS:
            yield pa.Table.from_pylist(chunk, schema=schema)
            chunk, chars = [], 0
    if chunk:
        yield pa.Table.from_pylist(chunk, schema=schema)


def _records(path: Path, source: str) -> Iterator[Record]:
    """Each object of the file and the characters it took (0 in a list, which is held whole anyway)."""
    if holds_json_list(path):
        yield from _list_records(path, source)
        return
    for number, line in json_lines(path):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise _one_document(path, source) or ConfigError(
                f"{source}: line {number} is not valid JSON ({error.msg} at column {error.colno}): "
                f"{snippet(line.rstrip())}. Fix: write each line as one complete JSON object, such as "
                '{"prompt": "...", "completion": "..."}, with line breaks inside strings written as \\n.'
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: line {number} is a JSON {type(value).__name__}, not an object: "
                f"{snippet(line.rstrip())}. Fix: write each line as one JSON object, such as "
                '{"prompt": "...", "completion": "..."}.'
            )
        yield value, len(line)


def _list_records(path: Path, source: str) -> Iterator[Record]:
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{source}: line {error.lineno} is not valid JSON ({error.msg} at column {error.colno}). "
            "Fix: correct the JSON there, or save the data as JSON Lines (.jsonl), one object per line."
        ) from None
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ConfigError(
                f"{source}: row {number} of the list is a JSON {type(item).__name__}, not an object: "
                f"{shorten(json.dumps(item, ensure_ascii=False))}. Fix: write the file as a list of objects, such as "
                '[{"prompt": "...", "completion": "..."}, ...], or as JSON Lines (.jsonl).'
            )
        yield item, 0


def _one_document(path: Path, source: str) -> ConfigError | None:
    """The error for a file that is one JSON value other than a list, spread over lines; ``None`` for any other file.

    Such a file (an object holding the rows under a key, say) reads as broken JSON
    Lines, so it is told apart only once a line fails to parse.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:
        return None
    return ConfigError(
        f"{source}: the file holds one JSON {type(value).__name__}, not a list of objects or JSON Lines. Fix: write "
        'it as [{"prompt": "...", "completion": "..."}, ...], or as JSON Lines (.jsonl), one object per line.'
    )
