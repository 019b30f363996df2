"""Tool calling in ``messages``: calls trained, results not, ``tools`` handed to the template, Arrow's nulls dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_lora.data.formats import to_conversation
from lit_lora.data.tools import row_tools
from lit_lora.errors import ConfigError
from tests.helpers.sft import ids, masked, tokenized


def call(**arguments: str) -> dict:
    return {"type": "function", "function": {"name": "weather", "arguments": arguments}}


def row(arguments: dict, tool: dict) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris"},
            {"role": "assistant", "content": None, "tool_calls": [call(**arguments)]},
            {"role": "tool", "content": "sunny", "tool_call_id": "1"},
            {"role": "assistant", "content": "sunny"},
        ],
        "tools": [tool],
    }


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"city": {"type": "string"}}}}
SUNNY = {"type": "function", "function": {"name": "sunny", "description": "Is it sunny"}}


def test_chat_trains_calls_and_answers_not_results(tmp_path: Path, tools_path: str) -> None:
    # Arrow gives both rows every key either row has (arguments city and in, the tools'
    # parameters and description), as null where a row has none; nulls are dropped again.
    first, second = tokenized(tmp_path, tools_path, [row({"city": "Paris"}, WEATHER), row({"in": "Paris"}, SUNNY)])
    prompt = "<s> <|im_start|> system \n Tools : {} <|im_end|> \n <|im_start|> user \n Weather in Paris <|im_end|> \n"
    prompt += " <|im_start|> assistant \n"
    result = "<|im_start|> tool \n sunny <|im_end|> \n <|im_start|> assistant \n"
    answer = "sunny <|im_end|> \n"
    for example, tool, argument in ((first, "weather", "city"), (second, "sunny", "in")):
        context, called = prompt.format(tool), f"call weather ( {argument} = Paris ) <|im_end|> \n"
        assert example == {
            "input_ids": ids(f"{context} {called} {result} {answer}"),
            "labels": masked(context) + ids(called) + masked(result) + ids(answer),
        }


def test_plain_writes_each_call_as_json_after_the_content(tmp_path: Path, plain_path: str) -> None:
    messages = row({"city": "Paris"}, WEATHER)["messages"]
    messages[1]["content"] = "Weather"
    [example] = tokenized(tmp_path, plain_path, [{"messages": messages}])
    prompt = "<s> ### User : \n Weather in Paris \n \n ### Assistant : \n"
    called = 'Weather \n {" name ": " weather ", " arguments ": {" city ": " Paris "}} </s>'
    result = "\n \n ### Tool : \n sunny \n \n ### Assistant : \n"
    assert example == {
        "input_ids": ids(f"{prompt} {called} {result} sunny </s> \n \n"),
        "labels": masked(prompt) + ids(called) + masked(result) + ids("sunny </s>") + masked("\n \n"),
    }


def test_a_tool_turn_keeps_its_name_and_call_id() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "tool", "content": "sunny", "name": "weather", "tool_call_id": "1"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert to_conversation({"messages": messages}, "messages")[1] == {
        "role": "tool",
        "content": "sunny",
        "name": "weather",
        "tool_call_id": "1",
    }


def test_tools_may_be_json_text_or_absent() -> None:
    assert row_tools({"tools": '[{"type": "function", "function": {"name": "weather"}}]'}) == [
        {"type": "function", "function": {"name": "weather"}}
    ]
    assert row_tools({"tools": None}) is None
    assert row_tools({}) is None


@pytest.mark.parametrize(
    ("tool_calls", "problem"),
    [
        ("weather", r"messages\[1\]\.tool_calls is 'weather', not a non-empty list of calls"),
        ([{"function": {"arguments": {}}}], r"messages\[1\]\.tool_calls\[0\] is .*, which names no function"),
    ],
)
def test_bad_tool_calls_name_the_turn(tool_calls: object, problem: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": tool_calls}]
    with pytest.raises(ConfigError, match=problem):
        to_conversation({"messages": messages}, "messages")


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        ("[{", r"field 'tools' is a string that is not JSON"),
        ({"name": "weather"}, r"field 'tools' is \{'name': 'weather'\}, not a list of tool definitions"),
    ],
)
def test_bad_tools_name_the_field(tools: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        row_tools({"tools": tools})
