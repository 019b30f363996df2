"""Exact input ids and labels of examples, from file to tokenized dataset, in chat and plain mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lit_lora.data import SFTDataModule
from lit_lora.errors import ConfigError
from tests.helpers.sft import VOCAB, ids, masked, write_jsonl

CONVERSATION = [
    {"role": "system", "content": "Be brief"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "How are you"},
    {"role": "assistant", "content": "Fine thanks"},
]
ALPACA = [
    {"instruction": "Sum 1 2", "input": "", "output": "3"},
    {"instruction": "Sum", "input": "1 2", "output": "3"},
]
ALPACA_HEAD = "Below is an instruction that describes a task"
ALPACA_TAIL = "Write a response that appropriately completes the request . \n \n ### Instruction : \n"
WITH_INPUT = ", paired with an input that provides further context ."


def tokenized(
    tmp_path: Path, tokenizer: str, rows: list[dict[str, Any]], **settings: Any
) -> list[dict[str, list[int]]]:
    """The training examples a data module makes of ``rows``, in file order."""
    data = SFTDataModule(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer_name_or_path=tokenizer, **settings)
    data.setup("fit")
    return data.dataset("train").to_list()


def test_prompt_completion_chat(tmp_path: Path, chat_path: str) -> None:
    [example] = tokenized(tmp_path, chat_path, [{"prompt": "Hi", "completion": "Hello there"}])
    prompt = "<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"
    response = "Hello there <|im_end|> \n"
    assert example == {"input_ids": ids(f"{prompt} {response}"), "labels": masked(prompt) + ids(response)}


def test_alpaca_chat(tmp_path: Path, chat_path: str) -> None:
    without_input, with_input = tokenized(tmp_path, chat_path, ALPACA)
    prompt = "<s> <|im_start|> user \n Sum 1 2 <|im_end|> \n <|im_start|> assistant \n"
    assert without_input == {
        "input_ids": ids(f"{prompt} 3 <|im_end|> \n"),
        "labels": masked(prompt) + ids("3 <|im_end|> \n"),
    }
    # Instruction and input are joined with a blank line.
    prompt = "<s> <|im_start|> user \n Sum \n \n 1 2 <|im_end|> \n <|im_start|> assistant \n"
    assert with_input == {
        "input_ids": ids(f"{prompt} 3 <|im_end|> \n"),
        "labels": masked(prompt) + ids("3 <|im_end|> \n"),
    }


def test_multi_turn_chat_trains_every_assistant_turn_and_nothing_else(tmp_path: Path, chat_path: str) -> None:
    [example] = tokenized(tmp_path, chat_path, [{"messages": CONVERSATION}])
    first = (
        "<s> <|im_start|> system \n Be brief <|im_end|> \n"
        " <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"
    )
    second = "<|im_start|> user \n How are you <|im_end|> \n <|im_start|> assistant \n"
    assert example["input_ids"] == ids(f"{first} Hello <|im_end|> \n {second} Fine thanks <|im_end|> \n")
    assert example["labels"] == masked(first) + ids("Hello <|im_end|> \n") + masked(second) + ids(
        "Fine thanks <|im_end|> \n"
    )


def test_prompt_completion_plain(tmp_path: Path, plain_path: str) -> None:
    # Raw concatenation: no separator is added between prompt and completion.
    [example] = tokenized(tmp_path, plain_path, [{"prompt": "Hi", "completion": " Hello there"}])
    assert example == {
        "input_ids": ids("<s> Hi Hello there </s>"),
        "labels": masked("<s> Hi") + ids("Hello there </s>"),
    }


def test_alpaca_plain(tmp_path: Path, plain_path: str) -> None:
    without_input, with_input = tokenized(tmp_path, plain_path, ALPACA)
    prompt = f"<s> {ALPACA_HEAD} . {ALPACA_TAIL} Sum 1 2 \n \n ### Response : \n"
    assert without_input == {"input_ids": ids(f"{prompt} 3 </s>"), "labels": masked(prompt) + ids("3 </s>")}
    prompt = f"<s> {ALPACA_HEAD} {WITH_INPUT} {ALPACA_TAIL} Sum \n \n ### Input : \n 1 2 \n \n ### Response : \n"
    assert with_input == {"input_ids": ids(f"{prompt} 3 </s>"), "labels": masked(prompt) + ids("3 </s>")}


def test_messages_plain(tmp_path: Path, plain_path: str) -> None:
    [example] = tokenized(tmp_path, plain_path, [{"messages": CONVERSATION}])
    first = "<s> Be brief \n \n ### User : \n Hi \n \n ### Assistant : \n"
    second = "\n \n ### User : \n How are you \n \n ### Assistant : \n"
    assert example["input_ids"] == ids(f"{first} Hello </s> {second} Fine thanks </s> \n \n")
    assert example["labels"] == masked(first) + ids("Hello </s>") + masked(second) + ids("Fine thanks </s>") + masked(
        "\n \n"
    )


def test_plain_template_on_a_chat_tokenizer_uses_its_eos(tmp_path: Path, chat_path: str) -> None:
    [example] = tokenized(tmp_path, chat_path, [{"prompt": "Hi", "completion": "Hello"}], template="plain")
    assert example == {
        "input_ids": ids("<s> Hi Hello <|im_end|>"),
        "labels": masked("<s> Hi") + ids("Hello <|im_end|>"),
    }


@pytest.mark.parametrize(
    ("tokenizer", "template"), [("chat_path", "auto"), ("chat_path", "plain"), ("plain_path", "auto")]
)
def test_exactly_one_bos(tmp_path: Path, tokenizer: str, template: str, request: pytest.FixtureRequest) -> None:
    # The chat tokenizer both adds <s> itself and writes {{ bos_token }} in its template.
    rows = [{"prompt": "Hi", "completion": "Hello"}]
    [example] = tokenized(tmp_path, request.getfixturevalue(tokenizer), rows, template=template)
    assert example["input_ids"][0] == VOCAB["<s>"]
    assert example["input_ids"].count(VOCAB["<s>"]) == 1


def test_train_on_prompt_trains_every_token(tmp_path: Path, chat_path: str) -> None:
    [example] = tokenized(tmp_path, chat_path, [{"prompt": "Hi", "completion": "Hello"}], train_on_prompt=True)
    expected = ids("<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n Hello <|im_end|> \n")
    assert example == {"input_ids": expected, "labels": expected}


def test_truncation_keeps_the_start(tmp_path: Path, chat_path: str) -> None:
    [example] = tokenized(tmp_path, chat_path, [{"prompt": "Hi", "completion": "Hello there"}], max_length=12)
    prompt = "<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"
    assert example == {"input_ids": ids(f"{prompt} Hello there"), "labels": masked(prompt) + ids("Hello there")}


def test_chat_template_required_for_chat_mode(tmp_path: Path, plain_path: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.template: 'chat', but tokenizer '.*' has no chat template"):
        tokenized(tmp_path, plain_path, [{"prompt": "Hi", "completion": "Hello"}], template="chat")


def test_template_that_rewrites_history_is_refused(tmp_path: Path, reversed_path: str) -> None:
    with pytest.raises(
        ConfigError, match=r"line 1: the chat template of tokenizer '.*reversed.*' .* data\.template: plain"
    ):
        tokenized(tmp_path, reversed_path, [{"prompt": "Hi", "completion": "Hello"}])


def test_assistant_first_cannot_be_rendered_by_a_chat_template(tmp_path: Path, chat_path: str) -> None:
    rows = [{"messages": [{"role": "assistant", "content": "Hello"}]}]
    with pytest.raises(ConfigError, match=r"line 1: messages starts with an assistant turn"):
        tokenized(tmp_path, chat_path, rows)


def test_subclass_adds_a_format(tmp_path: Path, chat_path: str, plain_path: str) -> None:
    class QuestionAnswer(SFTDataModule):
        format_columns = {**SFTDataModule.format_columns, "qa": ("question", "answer")}

        def to_conversation(self, row: dict[str, Any], format: str) -> list[dict[str, str]]:
            if format == "qa":
                return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
            return super().to_conversation(row, format)

    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Hi", "answer": "Hello"}])
    chat, plain = (QuestionAnswer(path, tokenizer_name_or_path=tokenizer) for tokenizer in (chat_path, plain_path))
    chat.setup("fit")
    plain.setup("fit")
    assert chat.dataset("train")["input_ids"][:] == [
        ids("<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n Hello <|im_end|> \n")
    ]
    # Plain mode falls back to the messages layout for formats it has no template of.
    assert plain.dataset("train")["input_ids"][:] == [
        ids("<s> ### User : \n Hi \n \n ### Assistant : \n Hello </s> \n \n")
    ]
