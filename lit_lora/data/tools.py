"""Tool calling in conversations: assistant ``tool_calls``, and the ``tools`` a row hands to the chat template.

A tool call is written as in OpenAI's and Hugging Face's chat format,
``{"type": "function", "function": {"name": ..., "arguments": ...}}`` (or just
``{"name": ..., "arguments": ...}``), and kept as written for the chat template.
``tools`` is a list of tool definitions (JSON schemas), or a JSON string of one as
LLaMA-Factory stores it.

Arrow reads a JSON lines file into one schema, so a key that any row's tool call or
tool definition has is filled in as null in every other row; nulls are dropped from
both again, so each row reaches the template as written.

Plain mode (no chat template) writes each call, and each tool definition, as a JSON
object on a line of its own (see ``lit_lora.data.render``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lit_lora.errors import ConfigError


def drop_nulls(value: Any) -> Any:
    """``value`` with every null-valued key of every nested mapping removed.

    Args:
        value: A JSON-like value: mappings, lists, strings, numbers.
    """
    if isinstance(value, Mapping):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value


def check_tool_calls(value: Any, name: str) -> list[dict[str, Any]]:
    """Validate an assistant turn's ``tool_calls``: a list of calls, each naming its function.

    Args:
        value: The turn's ``tool_calls`` value.
        name: The field, named in errors (``messages[2].tool_calls``).

    Raises:
        ConfigError: It is not a list of calls that each have a string ``name``
            (or ``function.name``).
    """
    calls = drop_nulls(value)
    if not isinstance(calls, list) or not calls:
        raise ConfigError(
            f"{name} is {calls!r}, not a non-empty list of calls. Fix: write it as "
            '[{"type": "function", "function": {"name": "...", "arguments": {...}}}], or leave it out.'
        )
    for index, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ConfigError(
                f"{name}[{index}] is {call!r}, which names no function. "
                'Fix: write it as {"type": "function", "function": {"name": "...", "arguments": {...}}}.'
            )
    return calls


def row_tools(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The tool definitions of a row's ``tools`` column; ``None`` when it has none.

    Args:
        row: One example as read from the file.

    Raises:
        ConfigError: ``tools`` is neither a list of definitions nor a JSON string of one.
    """
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"field 'tools' is a string that is not JSON ({error}). "
                "Fix: write it as a list of tool definitions, or as that list's JSON text."
            ) from None
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(isinstance(tool, Mapping) for tool in tools):
        raise ConfigError(
            f"field 'tools' is {tools!r}, not a list of tool definitions. "
            'Fix: write it as [{"type": "function", "function": {"name": "...", "parameters": {...}}}].'
        )
    return drop_nulls(tools)


def plain_json(value: Any) -> str:
    """A tool call or definition as one line of JSON, non-ASCII text kept as written.

    Args:
        value: The call's ``function`` (or the call) or a tool definition.
    """
    return json.dumps(value, ensure_ascii=False)


def plain_reply(content: str, tool_calls: list[dict[str, Any]]) -> str:
    """An assistant turn's text in plain mode: its content, then each call's JSON on a line of its own.

    Args:
        content: The reply text (``""`` for a turn that only calls tools).
        tool_calls: The turn's calls, as :func:`check_tool_calls` returned them.
    """
    calls = [plain_json(call.get("function", call)) for call in tool_calls]
    return "\n".join([content, *calls] if content else calls)
