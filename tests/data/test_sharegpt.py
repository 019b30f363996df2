"""ShareGPT conversations: roles from ``from``, tool calls from ``function_call``, exact ids in chat and plain mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_lora.data.formats import detect_format, to_conversation
from lit_lora.errors import ConfigError
from tests.helpers.sft import ids, masked, tokenized

CALL = {"name": "weather", "arguments": {"city": "Paris"}}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
ROW = {
    "conversations": [
        {"from": "system", "value": "Be brief"},
        {"from": "human", "value": "Weather in Paris"},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "sunny"},
    ],
    # LLaMA-Factory stores the tool definitions as JSON text.
    "tools": json.dumps(TOOLS),
}


def test_detected_from_the_conversations_column() -> None:
    assert detect_format(["conversations", "tools"], "data.train_file 'x.jsonl'") == "sharegpt"


def test_turns_become_messages() -> None:
    assert to_conversation(ROW, "sharegpt") == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Weather in Paris"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "sunny"},
    ]


def test_chat_trains_the_tool_call_and_the_answer_not_the_result(tmp_path: Path, tools_path: str) -> None:
    [example] = tokenized(tmp_path, tools_path, [ROW])
    prompt = (
        "<s> <|im_start|> system \n Tools : weather <|im_end|> \n <|im_start|> system \n Be brief <|im_end|> \n"
        " <|im_start|> user \n Weather in Paris <|im_end|> \n <|im_start|> assistant \n"
    )
    call = "call weather ( city = Paris ) <|im_end|> \n"
    result = "<|im_start|> tool \n sunny <|im_end|> \n <|im_start|> assistant \n"
    answer = "sunny <|im_end|> \n"
    assert example == {
        "input_ids": ids(f"{prompt} {call} {result} {answer}"),
        "labels": masked(prompt) + ids(call) + masked(result) + ids(answer),
    }


def test_plain_writes_tools_and_calls_as_json_lines(tmp_path: Path, plain_path: str) -> None:
    [example] = tokenized(tmp_path, plain_path, [ROW])
    tools = '### Tools : \n {" type ": " function ", " function ": {" name ": " weather ", " parameters ": {}}} \n \n'
    prompt = f"<s> {tools} Be brief \n \n ### User : \n Weather in Paris \n \n ### Assistant : \n"
    call = '{" name ": " weather ", " arguments ": {" city ": " Paris "}} </s>'
    result = "\n \n ### Tool : \n sunny \n \n ### Assistant : \n"
    assert example == {
        "input_ids": ids(f"{prompt} {call} {result} sunny </s> \n \n"),
        "labels": masked(prompt) + ids(call) + masked(result) + ids("sunny </s>") + masked("\n \n"),
    }


def test_a_turn_with_weight_zero_is_context(tmp_path: Path, chat_path: str) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello", "weight": 0},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Bye"},
        ]
    }
    [example] = tokenized(tmp_path, chat_path, [row])
    context = (
        "<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n Hello <|im_end|> \n"
        " <|im_start|> user \n Bye <|im_end|> \n <|im_start|> assistant \n"
    )
    assert example == {
        "input_ids": ids(f"{context} Bye <|im_end|> \n"),
        "labels": masked(context) + ids("Bye <|im_end|> \n"),
    }


@pytest.mark.parametrize(
    ("conversations", "problem"),
    [
        ("Hi", r"field 'conversations' is str, not a list"),
        ([{"from": "bot", "value": "Hi"}], r"conversations\[0\]\.from is 'bot'; known values are system, human"),
        ([{"from": "human"}], r"conversations\[0\] is \{'from': 'human'\}; each turn needs 'from' and 'value'"),
        (
            [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "weather(Paris)"}],
            r"conversations\[1\]\.value is 'weather\(Paris\)', not the JSON of a tool call",
        ),
        ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}], r"conversations\[1\]\.content is an empty"),
        ([{"from": "human", "value": "Hi"}], "conversations has no assistant turn"),
    ],
)
def test_bad_conversations_name_the_turn(conversations: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        to_conversation({"conversations": conversations}, "sharegpt")
