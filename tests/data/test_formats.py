"""Format detection, column checks and row validation, with errors naming file, row and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_lora.data import SFTDataModule
from lit_lora.data.formats import detect_format, resolve_format, to_conversation
from lit_lora.errors import ConfigError
from tests.helpers.sft import write_jsonl


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["prompt", "completion", "id"], "prompt_completion"),
        (["instruction", "output"], "alpaca"),
        (["instruction", "input", "output"], "alpaca"),
        (["messages", "source"], "messages"),
    ],
)
def test_detect_format(columns: list[str], expected: str) -> None:
    assert detect_format(columns, "data.train_file 'x.jsonl'") == expected


def test_unknown_columns_list_what_each_format_needs() -> None:
    with pytest.raises(ConfigError) as error:
        detect_format(["question", "answer"], "data.train_file 'qa.jsonl'")
    assert str(error.value) == (
        "data.train_file 'qa.jsonl': no format matches its columns; columns found: ['question', 'answer']. "
        "'prompt_completion' needs prompt, completion; 'alpaca' needs instruction, output; 'messages' needs messages; "
        "'sharegpt' needs conversations; 'text' needs text. "
        "Fix: rename the columns, or set data.format to the format the data is in."
    )


def test_columns_of_two_formats_are_ambiguous() -> None:
    with pytest.raises(ConfigError, match=r"match several formats \(prompt_completion, messages\)"):
        detect_format(["prompt", "completion", "messages"], "data.train_file 'x.jsonl'")


def test_explicit_format_with_missing_columns() -> None:
    with pytest.raises(
        ConfigError,
        match=r"data\.format 'alpaca' needs columns \['instruction', 'output'\], "
        r"but \['instruction', 'output'\] are missing; columns found: \['prompt', 'completion'\]",
    ):
        resolve_format("alpaca", ["prompt", "completion"], "data.train_file 'x.jsonl'")


def test_unknown_format_name_is_rejected_in_code() -> None:
    with pytest.raises(ConfigError, match=r"data\.format: unknown format 'vicuna'"):
        resolve_format("vicuna", ["conversations"], "data.train_file 'x.jsonl'")


def test_alpaca_input_may_be_missing_or_null() -> None:
    expected = [{"role": "user", "content": "Sum"}, {"role": "assistant", "content": "3"}]
    assert to_conversation({"instruction": "Sum", "output": "3"}, "alpaca") == expected
    assert to_conversation({"instruction": "Sum", "input": None, "output": "3"}, "alpaca") == expected


def test_messages_keep_only_role_and_content() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Hi", "name": None},
            {"role": "assistant", "content": "Hello", "name": "bot"},
        ]
    }
    assert to_conversation(row, "messages") == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "Hi"}], "messages has no assistant turn"),
        ([{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "ok"}], r"messages\[0\]\.role is 'bot'"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 4}], r"messages\[1\]\.content is int 4"),
        ("Hi", "field 'messages' is str, not a list"),
    ],
)
def test_bad_messages_name_file_and_row(tmp_path: Path, chat_path: str, messages: object, problem: str) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": messages},
    ]
    data = SFTDataModule(write_jsonl(tmp_path / "chats.jsonl", rows), tokenizer_name_or_path=chat_path)
    with pytest.raises(ConfigError, match=rf"data\.train_file '.*chats\.jsonl', line 2: {problem}"):
        data.setup("fit")


@pytest.mark.parametrize(("value", "shown"), [(123, "int 123, not a string"), (None, r"missing \(or null\)")])
def test_non_string_field_names_file_row_and_field(tmp_path: Path, plain_path: str, value: object, shown: str) -> None:
    rows = [{"prompt": "Hi", "completion": "Hello"}, {"prompt": value, "completion": "Hello"}]
    data = SFTDataModule(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer_name_or_path=plain_path)
    with pytest.raises(ConfigError, match=rf"data\.train_file '.*train\.jsonl', line 2: field 'prompt' is {shown}"):
        data.setup("fit")


def test_wrong_columns_fail_before_tokenizing(tmp_path: Path, chat_path: str) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Hi", "answer": "Hello"}])
    data = SFTDataModule(path, tokenizer_name_or_path=chat_path)
    with pytest.raises(
        ConfigError,
        match=r"data\.train_file '.*qa\.jsonl': no format matches its columns; columns found: \['question', 'answer'\]",
    ):
        data.setup("fit")


@pytest.mark.parametrize(
    ("control", "problem"),
    [
        ({"weight": 0.5}, r"messages\[1\]\.weight is 0\.5; a turn is trained \(1\) or context only \(0\)"),
        ({"train": "no"}, r"messages\[1\]\.train is 'no', not true or false"),
        ({"train": False}, "messages: every assistant turn has train: false"),
    ],
)
def test_bad_turn_controls_name_the_turn(control: dict, problem: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", **control}]
    with pytest.raises(ConfigError, match=problem):
        to_conversation({"messages": messages}, "messages")
