"""The example formats a data file can be in, and turning one row into a conversation.

A conversation is a list of ``{"role": ..., "content": ...}`` dicts, roles ``system``,
``user`` and ``assistant``: what chat templates render.

Formats and the columns they read:

* ``prompt_completion``: ``prompt``, ``completion``.
* ``alpaca``: ``instruction``, ``output`` and optionally ``input`` (missing, null or
  empty means no input).
* ``messages``: ``messages``, a list of turns ending with an assistant turn.

Bad rows stop the run with an error naming the field, what was found and the fix,
rather than being skipped: a text field that is not a string (a JSON number is not
turned into text, it is refused), a missing field, an empty response (it would
teach the model to stop at once), an unknown role, a conversation with no
assistant turn, or one that goes on after its last assistant turn (those turns
would never be trained on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lit_lora.errors import ConfigError

# Format name -> the columns it cannot do without.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
}

ROLES = ("system", "user", "assistant")

Conversation = list[dict[str, str]]


def _needs(format_columns: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"'{name}' needs {', '.join(columns)}" for name, columns in format_columns.items())


def detect_format(
    column_names: Sequence[str], source_name: str, format_columns: Mapping[str, Sequence[str]] = FORMAT_COLUMNS
) -> str:
    """Name the one format whose required columns the data has.

    Args:
        column_names: The columns of the loaded data.
        source_name: Where the data came from (``data.train_file 'x.jsonl'``), named in errors.
        format_columns: Format name -> required columns.

    Raises:
        ConfigError: No format, or more than one, matches the columns.
    """
    matches = [name for name, needed in format_columns.items() if set(needed) <= set(column_names)]
    if len(matches) == 1:
        return matches[0]
    problem = (
        f"its columns match several formats ({', '.join(matches)})" if matches else "no format matches its columns"
    )
    raise ConfigError(
        f"{source_name}: {problem}; columns found: {list(column_names)}. {_needs(format_columns)}. "
        "Fix: rename the columns, or set data.format to the format the data is in."
    )


def check_format_name(
    name: str, format_columns: Mapping[str, Sequence[str]] = FORMAT_COLUMNS, field: str = "data.format"
) -> None:
    """Reject a format name that names no known format.

    Args:
        name: ``"auto"`` or a format name.
        format_columns: Format name -> required columns.
        field: The config field the name came from, named in the error.

    Raises:
        ConfigError: The name is neither ``"auto"`` nor a key of ``format_columns``.
    """
    if name != "auto" and name not in format_columns:
        raise ConfigError(f"{field}: unknown format '{name}'. Fix: use 'auto' or one of {', '.join(format_columns)}.")


def resolve_format(
    requested: str,
    column_names: Sequence[str],
    source_name: str,
    format_columns: Mapping[str, Sequence[str]] = FORMAT_COLUMNS,
) -> str:
    """Return the format to read the data with, checking that its columns are there.

    Args:
        requested: ``"auto"`` to detect the format from the columns, or a format name.
        column_names: The columns of the loaded data.
        source_name: Where the data came from, named in errors.
        format_columns: Format name -> required columns.

    Raises:
        ConfigError: The format is unknown, cannot be detected, or its columns are missing.
    """
    if requested == "auto":
        return detect_format(column_names, source_name, format_columns)
    check_format_name(requested, format_columns)
    missing = [column for column in format_columns[requested] if column not in column_names]
    if missing:
        raise ConfigError(
            f"{source_name}: data.format '{requested}' needs columns {list(format_columns[requested])}, "
            f"but {missing} are missing; columns found: {list(column_names)}. Fix: rename the columns, "
            "or set data.format to the format the data is in (or 'auto')."
        )
    return requested


def text_field(row: Mapping[str, Any], field: str) -> str:
    """Return a text field, refusing anything that is not a string.

    A number or null would otherwise reach the tokenizer as ``"123"`` or ``"None"``.

    Args:
        row: One example as read from the file.
        field: The column to read.

    Raises:
        ConfigError: The value is not a string.
    """
    return _string(row[field], f"field '{field}'")


def response_field(row: Mapping[str, Any], field: str) -> str:
    """Return a response field: a non-empty string.

    Args:
        row: One example as read from the file.
        field: The column holding the response (``completion``, ``output``).

    Raises:
        ConfigError: The value is not a string, or is empty.
    """
    return _response(row[field], f"field '{field}'")


def _response(value: Any, name: str) -> str:
    if not _string(value, name).strip():
        raise ConfigError(
            f"{name} is an empty response, which would train the model to stop at once. "
            "Fix: write the response, or drop the example."
        )
    return value


def _string(value: Any, name: str) -> str:
    if value is None:
        # Arrow stores a key a row leaves out as null, so the two cannot be told apart.
        raise ConfigError(f"{name} is missing (or null). Fix: give every example a string value for it.")
    if not isinstance(value, str):
        raise ConfigError(
            f"{name} is {type(value).__name__} {value!r}, not a string. "
            "Fix: write it as a string in the file (in quotes, in JSON)."
        )
    return value


def to_conversation(row: Mapping[str, Any], format: str) -> Conversation:
    """Turn one row into a conversation.

    ``alpaca`` joins instruction and input with a blank line; ``messages`` keeps only
    each turn's role and content.

    Args:
        row: One example as read from the file.
        format: One of the formats in ``FORMAT_COLUMNS``.

    Raises:
        ConfigError: A field is not a string, or the messages are malformed.
    """
    if format == "prompt_completion":
        return [
            {"role": "user", "content": text_field(row, "prompt")},
            {"role": "assistant", "content": response_field(row, "completion")},
        ]
    if format == "alpaca":
        instruction, extra = text_field(row, "instruction"), alpaca_input(row)
        return [
            {"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction},
            {"role": "assistant", "content": response_field(row, "output")},
        ]
    if format == "messages":
        return check_messages(row["messages"])
    raise ConfigError(
        f"format '{format}' has no conversion. Fix: a data module that adds a format must override "
        "to_conversation to handle it."
    )


def alpaca_input(row: Mapping[str, Any]) -> str:
    """Return an Alpaca row's optional ``input``: ``""`` when the column is missing or null.

    Args:
        row: One alpaca example as read from the file.

    Raises:
        ConfigError: The input is neither a string nor null.
    """
    return "" if row.get("input") is None else text_field(row, "input")


def check_messages(messages: Any) -> Conversation:
    """Validate a ``messages`` value and return its turns as role/content dicts.

    Args:
        messages: The ``messages`` field of one row.

    Raises:
        ConfigError: It is not a list of turns with known roles and string contents,
            an assistant turn is empty, or the last turn is not the assistant's.
    """
    if not isinstance(messages, list):
        raise ConfigError(
            f"field 'messages' is {type(messages).__name__}, not a list. "
            'Fix: make it a list of turns such as [{"role": "user", "content": "..."}].'
        )
    conversation = []
    for turn, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
            raise ConfigError(
                f"messages[{turn}] is {message!r}; each turn needs 'role' and 'content'. "
                'Fix: write it as {"role": "user", "content": "..."}.'
            )
        if message["role"] not in ROLES:
            raise ConfigError(
                f"messages[{turn}].role is {message['role']!r}; known roles are {', '.join(ROLES)}. "
                "Fix: rename the role, or drop the turn."
            )
        check = _response if message["role"] == "assistant" else _string
        content = check(message["content"], f"messages[{turn}].content")
        conversation.append({"role": message["role"], "content": content})
    if not any(message["role"] == "assistant" for message in conversation):
        raise ConfigError(
            "messages has no assistant turn, so nothing would be trained. "
            "Fix: add the assistant's reply, or drop the example."
        )
    if conversation[-1]["role"] != "assistant":
        raise ConfigError(
            f"messages ends with a {conversation[-1]['role']} turn (messages[{len(conversation) - 1}]) after the "
            "last assistant reply; it would never be trained on. Fix: end the conversation with the assistant's "
            "reply, dropping the turns after it, or add the reply."
        )
    return conversation
