"""The example formats a data file can be in, and turning one row into a conversation.

A conversation is a list of ``{"role": ..., "content": ...}`` dicts, roles ``system``,
``user``, ``assistant`` and ``tool``: what chat templates render. An assistant turn may
carry ``tool_calls`` (see ``lit_lora.data.tools``); a tool turn keeps its ``name`` and
``tool_call_id``.

Formats and the columns they read:

* ``prompt_completion``: ``prompt``, ``completion``. Each is a string (one user turn,
  one assistant turn) or, as TRL writes conversational prompt-completion data, a list
  of turns: the prompt's system and user turns, the completion's assistant turn(s).
  An assistant turn inside the prompt is trained too, as in ``messages`` (TRL trains
  the completion only); mark it ``"train": false`` to keep it context.
* ``alpaca``: ``instruction``, ``output`` and optionally ``input`` (missing, null or
  empty means no input).
* ``messages``: ``messages``, a list of turns ending with an assistant turn, and
  optionally ``tools``, the tool definitions handed to the chat template.
* ``sharegpt``: ``conversations``, a list of ``{"from": ..., "value": ...}`` turns
  (see ``lit_lora.data.sharegpt``), and optionally ``tools``.
* ``text``: ``text``, a raw document for continued pre-training: every token trained,
  no template (see ``lit_lora.data.render``).

Every assistant turn is trained, but one with ``"train": false`` or ``"weight": 0``,
which is context only. System, user and tool turns are never trained.

Bad rows stop the run with an error naming the field, what was found and the fix,
rather than being skipped: a text field that is not a string (a JSON number is not
turned into text, it is refused), a missing field, an empty response (it would
teach the model to stop at once), an unknown role, a conversation with no
(trained) assistant turn, or one that goes on after its last assistant turn (those
turns would never be trained on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lit_lora.data.sharegpt import sharegpt_messages
from lit_lora.data.tools import check_tool_calls
from lit_lora.errors import ConfigError

# Format name -> the columns it cannot do without.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
}

ROLES = ("system", "user", "assistant", "tool")

Conversation = list[dict[str, Any]]


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

    ``alpaca`` joins instruction and input with a blank line; ``messages`` and
    ``sharegpt`` keep each turn's role, content, tool calls and ``train: false``.

    Args:
        row: One example as read from the file.
        format: One of the formats in ``FORMAT_COLUMNS`` but ``text``.

    Raises:
        ConfigError: A field is not a string, the turns are malformed, or the format is
            ``text``, whose documents are no conversations.
    """
    if format == "prompt_completion":
        return prompt_completion_conversation(row)
    if format == "alpaca":
        instruction, extra = text_field(row, "instruction"), alpaca_input(row)
        return [
            {"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction},
            {"role": "assistant", "content": response_field(row, "output")},
        ]
    if format == "messages":
        return check_messages(row["messages"])
    if format == "sharegpt":
        return check_messages(sharegpt_messages(row["conversations"]), "conversations")
    if format == "text":
        raise ConfigError(
            "format 'text' holds documents, not prompts and responses. Fix: generate from "
            "prompt_completion, alpaca, messages or sharegpt data."
        )
    raise ConfigError(
        f"format '{format}' has no conversion. Fix: a data module that adds a format must override "
        "to_conversation to handle it."
    )


def prompt_completion_conversation(row: Mapping[str, Any], response: str = "completion") -> Conversation:
    """The conversation of a ``prompt_completion`` row, or of a preference row's prompt and one response.

    A string prompt is one user turn and a string response one assistant turn; a
    list is taken as turns (TRL's conversational prompt-completion and preference data).

    Args:
        row: One example as read from the file.
        response: The column of the response: ``completion``, or ``chosen``/``rejected``.

    Raises:
        ConfigError: A field is neither text nor turns, or the turns are malformed.
    """
    return check_conversation(
        _side(row, "prompt", "user", text_field), _side(row, response, "assistant", response_field), response
    )


def _side(row: Mapping[str, Any], field: str, role: str, read: Callable[[Mapping[str, Any], str], str]) -> Conversation:
    value = row[field]
    return check_turns(value, field) if isinstance(value, list) else [{"role": role, "content": read(row, field)}]


def alpaca_input(row: Mapping[str, Any]) -> str:
    """Return an Alpaca row's optional ``input``: ``""`` when the column is missing or null.

    Args:
        row: One alpaca example as read from the file.

    Raises:
        ConfigError: The input is neither a string nor null.
    """
    return "" if row.get("input") is None else text_field(row, "input")


def check_messages(messages: Any, field: str = "messages") -> Conversation:
    """Validate a ``messages`` value and return its turns as a conversation.

    Args:
        messages: The ``messages`` field of one row (or turns made from another field).
        field: The field the turns come from, named in errors.

    Raises:
        ConfigError: It is not a list of turns with known roles and string contents,
            an assistant turn is empty, no assistant turn is trained, or the last turn
            is not the assistant's.
    """
    return check_conversation(check_turns(messages, field), [], field)


def check_turns(messages: Any, field: str) -> Conversation:
    """Validate a list of turns, returning each as a conversation turn.

    Args:
        messages: The list of turns.
        field: The field the turns come from, named in errors (``messages[2].role``).

    Raises:
        ConfigError: It is not a list, or a turn is malformed.
    """
    if not isinstance(messages, list):
        raise ConfigError(
            f"field '{field}' is {type(messages).__name__}, not a list. "
            'Fix: make it a list of turns such as [{"role": "user", "content": "..."}].'
        )
    return [_turn(message, f"{field}[{index}]") for index, message in enumerate(messages)]


def _turn(message: Any, name: str) -> dict[str, Any]:
    if (
        not isinstance(message, Mapping)
        or "role" not in message
        or ("content" not in message and "tool_calls" not in message)
    ):
        raise ConfigError(
            f"{name} is {message!r}; each turn needs 'role' and 'content'. "
            'Fix: write it as {"role": "user", "content": "..."}.'
        )
    role = message["role"]
    if role not in ROLES:
        raise ConfigError(
            f"{name}.role is {role!r}; known roles are {', '.join(ROLES)}. Fix: rename the role, or drop the turn."
        )
    # Arrow fills a key that other rows' turns have with null, so null means absent.
    if role == "assistant" and message.get("tool_calls") is not None:
        content = message.get("content")
        turn = {
            "role": role,
            "content": "" if content is None else _string(content, f"{name}.content"),
            "tool_calls": check_tool_calls(message["tool_calls"], f"{name}.tool_calls"),
        }
    else:
        check = _response if role == "assistant" else _string
        turn = {"role": role, "content": check(message.get("content"), f"{name}.content")}
    if role == "tool":
        turn |= {key: message[key] for key in ("name", "tool_call_id") if isinstance(message.get(key), str)}
    if role == "assistant" and not _trained(message, name):
        turn["train"] = False
    return turn


def _trained(message: Mapping[str, Any], name: str) -> bool:
    """Whether an assistant turn is trained: not when its ``train`` is false or its ``weight`` 0."""
    train, weight = message.get("train"), message.get("weight")
    if train is not None and not isinstance(train, bool):
        raise ConfigError(f"{name}.train is {train!r}, not true or false. Fix: write true or false (no quotes).")
    if weight is not None and weight not in (0, 1):
        raise ConfigError(
            f"{name}.weight is {weight!r}; a turn is trained (1) or context only (0), nothing between. "
            "Fix: write 0 or 1."
        )
    return train is not False and weight != 0


def check_conversation(prompt: Conversation, replies: Conversation, field: str = "completion") -> Conversation:
    """Join prompt turns and reply turns, checking that the conversation trains something and ends with a reply.

    Args:
        prompt: The turns before the replies (all of them for ``messages``).
        replies: The assistant turns that follow (empty when ``prompt`` holds every turn).
        field: The field whose turns end the conversation, named in errors.

    Raises:
        ConfigError: No assistant turn is trained, or the last turn is not the assistant's.
    """
    conversation = [*prompt, *replies]
    if not any(message["role"] == "assistant" for message in conversation):
        raise ConfigError(
            f"{field} has no assistant turn, so nothing would be trained. "
            "Fix: add the assistant's reply, or drop the example."
        )
    if not any(message["role"] == "assistant" and message.get("train", True) for message in conversation):
        raise ConfigError(
            f"{field}: every assistant turn has train: false (or weight: 0), so nothing would be trained. "
            "Fix: train at least one reply, or drop the example."
        )
    if conversation[-1]["role"] != "assistant":
        last = len(replies or prompt) - 1
        raise ConfigError(
            f"{field} ends with a {conversation[-1]['role']} turn ({field}[{last}]) after the "
            "last assistant reply; it would never be trained on. Fix: end the conversation with the assistant's "
            "reply, dropping the turns after it, or add the reply."
        )
    return conversation
