"""ShareGPT conversations, as Axolotl and LLaMA-Factory read them, turned into ``messages`` turns.

A row's ``conversations`` is a list of ``{"from": ..., "value": ...}`` turns. ``from``
maps to a role: ``system``; ``human`` (or ``user``) to ``user``; ``gpt`` (or
``assistant``) to ``assistant``; ``function_call`` to an assistant turn calling tools,
its value the JSON of one call ``{"name": ..., "arguments": ...}`` or a list of them;
``observation`` (or ``tool``) to a ``tool`` turn holding a tool's result. A turn's
``train`` and ``weight`` keys are kept (see ``lit_lora.data.formats``), and so is a
``tools`` column (see ``lit_lora.data.tools``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lit_lora.errors import ConfigError

FROM_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


def sharegpt_messages(conversations: Any) -> list[dict[str, Any]]:
    """The ``messages`` turns of a ShareGPT ``conversations`` value, in order, one per turn.

    Contents are kept as written; the turns are validated afterwards like ``messages``.

    Args:
        conversations: The ``conversations`` field of one row.

    Raises:
        ConfigError: It is not a list of turns with a known ``from`` and a ``value``, or
            a ``function_call`` value is not the JSON of a call.
    """
    if not isinstance(conversations, list):
        raise ConfigError(
            f"field 'conversations' is {type(conversations).__name__}, not a list. "
            'Fix: make it a list of turns such as [{"from": "human", "value": "..."}].'
        )
    messages = []
    for index, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or not {"from", "value"} <= turn.keys():
            raise ConfigError(
                f"conversations[{index}] is {turn!r}; each turn needs 'from' and 'value'. "
                'Fix: write it as {"from": "human", "value": "..."}.'
            )
        if turn["from"] not in FROM_ROLES:
            raise ConfigError(
                f"conversations[{index}].from is {turn['from']!r}; known values are {', '.join(FROM_ROLES)}. "
                "Fix: rename it, or drop the turn."
            )
        message = {key: turn[key] for key in ("train", "weight") if key in turn}
        message["role"] = FROM_ROLES[turn["from"]]
        if turn["from"] == "function_call":
            message |= {"content": "", "tool_calls": _calls(turn["value"], f"conversations[{index}].value")}
        else:
            message["content"] = turn["value"]
        messages.append(message)
    return messages


def _calls(value: Any, name: str) -> list[dict[str, Any]]:
    """The tool calls a ``function_call`` turn's JSON value spells, in the ``tool_calls`` layout."""
    try:
        calls = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        calls = None
    if isinstance(calls, Mapping):
        calls = [calls]
    if not isinstance(calls, list) or not all(isinstance(call, Mapping) for call in calls):
        raise ConfigError(
            f"{name} is {value!r}, not the JSON of a tool call. "
            'Fix: write it as \'{"name": "...", "arguments": {...}}\' (or a JSON list of such calls).'
        )
    return [{"type": "function", "function": call} for call in calls]
