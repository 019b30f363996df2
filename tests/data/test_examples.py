"""Exact input ids and labels of examples, from file to tokenized dataset, in chat and plain mode."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lit_lora.data import SFTDataModule
from lit_lora.errors import ConfigError
from tests.helpers.sft import VOCAB, ids, masked, tokenized, write_jsonl

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


DOCUMENTS = [{"text": "Hello there"}, {"text": "Fine thanks"}]


@pytest.mark.parametrize(("tokenizer", "eos"), [("chat_path", "<|im_end|>"), ("plain_path", "</s>")])
def test_text_trains_every_token_after_one_bos_and_no_template(
    tmp_path: Path, tokenizer: str, eos: str, request: pytest.FixtureRequest
) -> None:
    # The chat tokenizer's template is not applied; its BOS comes from the tokenizer, once.
    first, second = tokenized(tmp_path, request.getfixturevalue(tokenizer), DOCUMENTS)
    assert first == {"input_ids": ids(f"<s> Hello there {eos}"), "labels": masked("<s>") + ids(f"Hello there {eos}")}
    assert second == {"input_ids": ids(f"<s> Fine thanks {eos}"), "labels": masked("<s>") + ids(f"Fine thanks {eos}")}


def test_text_documents_pack_into_one_sequence(tmp_path: Path, chat_path: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", DOCUMENTS)
    data = SFTDataModule(path, tokenizer_name_or_path=chat_path, packing=True, max_length=8)
    data.setup("fit")
    [batch] = list(data.train_dataloader())
    documents = [ids("<s> Hello there <|im_end|>"), ids("<s> Fine thanks <|im_end|>")]
    assert batch["input_ids"].tolist() in ([documents[0] + documents[1]], [documents[1] + documents[0]])
    packed = batch["input_ids"][0].tolist()
    assert batch["labels"][0].tolist() == [-100, *packed[1:4], -100, *packed[5:8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]


CONVERSATIONAL = {
    "prompt": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
    "completion": [{"role": "assistant", "content": "Hello"}],
}


def test_conversational_prompt_completion_chat(tmp_path: Path, chat_path: str) -> None:
    [example] = tokenized(tmp_path, chat_path, [CONVERSATIONAL])
    prompt = (
        "<s> <|im_start|> system \n Be brief <|im_end|> \n"
        " <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"
    )
    assert example == {
        "input_ids": ids(f"{prompt} Hello <|im_end|> \n"),
        "labels": masked(prompt) + ids("Hello <|im_end|> \n"),
    }


def test_conversational_prompt_completion_plain(tmp_path: Path, plain_path: str) -> None:
    # Turns take the plain messages layout, not the raw concatenation of strings.
    [example] = tokenized(tmp_path, plain_path, [CONVERSATIONAL])
    prompt = "<s> Be brief \n \n ### User : \n Hi \n \n ### Assistant : \n"
    assert example == {
        "input_ids": ids(f"{prompt} Hello </s> \n \n"),
        "labels": masked(prompt) + ids("Hello </s>") + masked("\n \n"),
    }


@pytest.mark.parametrize("control", [{"train": False}, {"weight": 0}])
def test_an_untrained_assistant_turn_is_context_chat(tmp_path: Path, chat_path: str, control: dict) -> None:
    messages = [{**turn, **control} if turn["content"] == "Hello" else turn for turn in CONVERSATION]
    [example] = tokenized(tmp_path, chat_path, [{"messages": messages}])
    context = (
        "<s> <|im_start|> system \n Be brief <|im_end|> \n"
        " <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"
        " Hello <|im_end|> \n <|im_start|> user \n How are you <|im_end|> \n <|im_start|> assistant \n"
    )
    assert example == {
        "input_ids": ids(f"{context} Fine thanks <|im_end|> \n"),
        "labels": masked(context) + ids("Fine thanks <|im_end|> \n"),
    }


def test_an_untrained_assistant_turn_is_context_plain(tmp_path: Path, plain_path: str) -> None:
    messages = [{**turn, "train": turn["content"] != "Hello"} for turn in CONVERSATION]
    [example] = tokenized(tmp_path, plain_path, [{"messages": messages}])
    context = (
        "<s> Be brief \n \n ### User : \n Hi \n \n ### Assistant : \n Hello </s>"
        " \n \n ### User : \n How are you \n \n ### Assistant : \n"
    )
    assert example == {
        "input_ids": ids(f"{context} Fine thanks </s> \n \n"),
        "labels": masked(context) + ids("Fine thanks </s>") + masked("\n \n"),
    }


def test_system_prompt_goes_first_where_a_row_has_none(tmp_path: Path, chat_path: str) -> None:
    rows = [{"prompt": "Hi", "completion": "Hello"}, {"prompt": CONVERSATION[:2], "completion": CONVERSATION[2:3]}]
    added, kept = tokenized(tmp_path, chat_path, rows, system_prompt="Say yes")
    user = "<|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"
    prompt = f"<s> <|im_start|> system \n Say yes <|im_end|> \n {user}"
    assert added == {
        "input_ids": ids(f"{prompt} Hello <|im_end|> \n"),
        "labels": masked(prompt) + ids("Hello <|im_end|> \n"),
    }
    prompt = f"<s> <|im_start|> system \n Be brief <|im_end|> \n {user}"
    assert kept == {
        "input_ids": ids(f"{prompt} Hello <|im_end|> \n"),
        "labels": masked(prompt) + ids("Hello <|im_end|> \n"),
    }


def test_system_prompt_in_plain_mode_is_the_text_and_a_blank_line(tmp_path: Path, plain_path: str) -> None:
    [example] = tokenized(tmp_path, plain_path, [{"prompt": "Hi", "completion": " Hello"}], system_prompt="Say yes")
    assert example == {
        "input_ids": ids("<s> Say yes \n \n Hi Hello </s>"),
        "labels": masked("<s> Say yes \n \n Hi") + ids("Hello </s>"),
    }


def test_a_template_that_raises_names_the_row_and_its_message(tmp_path: Path, no_system_path: str) -> None:
    rows = [{"messages": CONVERSATION[1:]}, {"messages": CONVERSATION}]
    with pytest.raises(ConfigError) as error:
        tokenized(tmp_path, no_system_path, rows)
    assert re.fullmatch(
        r"data\.train_file '.*train\.jsonl', line 2: the chat template of tokenizer '.*' refused this example: "
        r"TemplateError: System role not supported\. Fix: change the example to what the template accepts "
        r"\(its roles, turn order, fields\), or set data\.template: plain\.",
        str(error.value),
    )
    # Only lit_lora's own errors are chained: no Jinja traceback follows the message.
    assert error.value.__cause__.__cause__ is None and error.value.__cause__.__suppress_context__
