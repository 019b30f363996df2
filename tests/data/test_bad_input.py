"""Bad input stops before training with an error naming the file, the line or row, what is there and the fix.

Policy, case by case: every problem below is an error, none is skipped, because each
would otherwise lose or invent training data silently. The one skip is an example
left with no trained token after truncation: it is dropped, counted in
``SFTDataModule.dropped`` and logged (see ``test_datamodule.py``), and a training split
left with nothing is an error.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pandas as pd
import pytest

from lit_lora.data import ClassificationDataModule, SFTDataModule, render
from lit_lora.data.files import load_split
from lit_lora.data.mixing import DataSource
from lit_lora.data.split import holdout_split
from lit_lora.errors import ConfigError
from tests.helpers.sft import write_jsonl

GOOD = '{"prompt": "Hi", "completion": "Hello"}\n'
HI = {"role": "user", "content": "Hi"}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Refuse every connection and name lookup, recording the attempts."""
    attempts = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("the test allows no network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "broken.jsonl",
            f'{GOOD}\n{{"prompt": "Hi",\n'.encode(),
            (
                r"line 3 is not valid JSON \(Expecting property name enclosed in double quotes at column 1\): "
                r"'\{\"prompt\": \"Hi\",'\. Fix: write each line as one complete JSON object"
            ),
        ),
        (
            # Whole and fractional numbers share a column, so the scan looks past them to the real fault.
            "numbers.jsonl",
            b'{"prompt": "Hi", "completion": "Hello", "score": 1}\n{"prompt": "Hi", "score": 1.5}\n{"prompt": Hi}\n',
            r"line 3 is not valid JSON \(Expecting value at column 12\)",
        ),
        (
            "list.jsonl",
            f"{GOOD}[1, 2]\n".encode(),
            r"line 2 is a JSON list, not an object: '\[1, 2\]'\. Fix: write each line as one JSON object",
        ),
        (
            "latin1.jsonl",
            GOOD.encode() + '{"prompt": "café", "completion": "ok"}\n'.encode("latin-1"),
            (
                r"line 2 is not valid UTF-8 \(byte 0xe9 at byte 16 of the line\): '\{\"prompt\": \"caf\ufffd\", "
                r"\"completion\": \"ok\"\}'\. Fix: save the file as UTF-8"
            ),
        ),
        ("empty.jsonl", b"", r"the file is empty \(or only blank lines\)\. Fix: point it at a file with examples"),
        ("blank.jsonl", b"\n  \n", r"the file is empty"),
        ("empty.csv", b"", r"the file is empty"),
        ("header.csv", b"prompt,completion\n", r"the file has a header row but no examples\. Fix: add rows"),
        (
            "short.csv",
            b'prompt,completion\nHi,Hello\n\n"Say\nyes"\n',
            (
                r"row 2 \(line 4\) has 1 fields but the header has 2 \(prompt, completion\): 'Say\\nyes'\. "
                r"Fix: give every row one value per column"
            ),
        ),
        ("long.csv", b"prompt,completion\nHi,Hello,there\n", r"row 1 \(line 2\) has 3 fields but the header has 2"),
        ("latin1.csv", "prompt,completion\nHi,café\n".encode("latin-1"), r"line 2 is not valid UTF-8"),
        (
            # One object spread over lines, not a list: told apart from broken JSON Lines.
            "dict.json",
            b'{\n  "rows": [{"prompt": "Hi", "completion": "Hello"}]\n}\n',
            r"the file holds one JSON dict, not a list of objects or JSON Lines\. Fix: write it as \[\{",
        ),
        (
            "broken.json",
            b'[{"prompt": "Hi", "completion": "Hello"},\n {"prompt" "Hi"}]',
            r"line 2 is not valid JSON \(Expecting ':' delimiter at column 12\)\. Fix: correct the JSON there",
        ),
    ],
)
def test_unreadable_file_names_file_line_and_fix(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^data\.train_file '.*{name}': {message}"):
        load_split(str(path), "data.train_file", "train")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files_are_read_without_the_network(tmp_path: Path, suffix: str, no_network: list) -> None:
    path = tmp_path / f"train{suffix}"
    frame = pd.DataFrame([{"prompt": "Hi", "completion": "Hello"}])
    {
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".json": lambda: frame.to_json(path, orient="records"),
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    assert load_split(str(path), "data.train_file", "train").to_list() == [{"prompt": "Hi", "completion": "Hello"}]
    assert no_network == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Hi"}, r"field 'completion' is missing \(or null\)\. Fix: give every example a string value"),
        (
            {"prompt": "Hi", "completion": ""},
            (
                r"field 'completion' is an empty response, which would train the model to stop at once\. "
                r"Fix: write the response, or drop the example"
            ),
        ),
    ],
)
@pytest.mark.parametrize("tokenizer", ["chat_path", "plain_path"])
def test_bad_row_names_file_line_found_value_and_fix(
    tmp_path: Path, row: dict, message: str, tokenizer: str, request: pytest.FixtureRequest
) -> None:
    # A blank line before the bad row: the error gives its line in the file, not its row index.
    path = tmp_path / "train.jsonl"
    path.write_text(f"{GOOD}\n{json.dumps(row)}\n", encoding="utf-8")
    data = SFTDataModule(str(path), tokenizer_name_or_path=request.getfixturevalue(tokenizer))
    with pytest.raises(ConfigError, match=rf"^data\.train_file '.*train\.jsonl', line 3: {message}"):
        data.setup("fit")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [HI, {"role": "assistant", "content": ""}],
            r"messages\[1\]\.content is an empty response, .* Fix: write the response, or drop the example",
        ),
        (
            [HI, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}],
            (
                r"messages ends with a user turn \(messages\[2\]\) after the last assistant reply; it would "
                r"never be trained on\. Fix: end the conversation with the assistant's reply"
            ),
        ),
        (
            [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "ok"}],
            r"messages\[0\]\.role is 'bot'; known roles are system, user, assistant, tool\. Fix: rename the role",
        ),
    ],
)
def test_bad_conversation_names_file_line_and_fix(tmp_path: Path, chat_path: str, messages: list, message: str) -> None:
    rows = [{"messages": [HI, {"role": "assistant", "content": "Hello"}]}, {"messages": messages}]
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    with pytest.raises(ConfigError, match=rf"^data\.train_file '.*chats\.jsonl', line 2: {message}"):
        SFTDataModule(path, tokenizer_name_or_path=chat_path).setup("fit")


def test_bad_csv_row_names_row_and_line(tmp_path: Path, plain_path: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text('prompt,completion\n"Say\nyes",yes\nHi,\n', encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=r"^data\.train_file '.*train\.csv', row 2 \(line 4\): field 'completion' is an empty response",
    ):
        SFTDataModule(str(path), tokenizer_name_or_path=plain_path).setup("fit")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        # Every value a number: the column is numeric, and the row says what it holds.
        (['{"prompt": "Hi", "completion": 123}'], r"line 1: field 'completion' is int 123, not a string\. Fix: "),
        # Text in one line and a number in the next: read back as written, then refused.
        ([GOOD.strip(), '{"prompt": "Hi", "completion": 1.5}'], r"line 2: field 'completion' is float 1\.5, not a"),
        # The same after a blank line: the line in the file, not the row.
        ([GOOD.strip(), "", '{"prompt": "Hi", "completion": 1.5}'], r"line 3: field 'completion' is float 1\.5, not a"),
    ],
)
def test_json_numbers_are_refused_not_turned_into_text(
    tmp_path: Path, plain_path: str, lines: list[str], message: str
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^data\.train_file '.*train\.jsonl', {message}"):
        SFTDataModule(str(path), tokenizer_name_or_path=plain_path).setup("fit")


def test_parquet_numbers_are_refused_with_row(tmp_path: Path, plain_path: str) -> None:
    path = tmp_path / "train.parquet"
    pd.DataFrame({"prompt": ["Hi", "Hi"], "completion": [1, 2]}).to_parquet(path)
    with pytest.raises(ConfigError, match=r"train\.parquet', row 1: field 'completion' is int 1, not a string"):
        SFTDataModule(str(path), tokenizer_name_or_path=plain_path).setup("fit")


def test_missing_chat_template_falls_back_to_plain_and_says_so(
    tmp_path: Path, plain_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = []
    monkeypatch.setattr(render, "rank_zero_info", logged.append)
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    data = SFTDataModule(path, tokenizer_name_or_path=plain_path)
    data.setup("fit")
    assert logged == [
        (
            f"lit_lora: tokenizer '{plain_path}' has no chat template, so examples are rendered with the plain "
            "template (### User: / ### Assistant:, see lit_lora.data.render). Set data.template: plain to choose "
            "it explicitly."
        )
    ]
    assert data.dataset("train")[0]["labels"][-1] == data.tokenizer.eos_token_id


@pytest.mark.parametrize(
    ("good", "bad", "field"),
    [
        ({"prompt": "Hi", "completion": "Hello"}, {"prompt": "Hi", "completion": " \n\t"}, "field 'completion'"),
        ({"instruction": "Hi", "output": "Hello"}, {"instruction": "Hi", "output": "  "}, "field 'output'"),
        (
            {"messages": [HI, {"role": "assistant", "content": "Hello"}]},
            {"messages": [HI, {"role": "assistant", "content": "\n"}]},
            r"messages\[1\]\.content",
        ),
    ],
)
def test_a_whitespace_only_response_names_file_line_and_field(
    tmp_path: Path, chat_path: str, good: dict, bad: dict, field: str
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(f"{json.dumps(good)}\n\n{json.dumps(bad)}\n", encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=(
            rf"^data\.train_file '.*train\.jsonl', line 3: {field} is an empty response, which would train the "
            r"model to stop at once\. Fix: write the response, or drop the example\.$"
        ),
    ):
        SFTDataModule(str(path), tokenizer_name_or_path=chat_path).setup("fit")


@pytest.mark.parametrize(("weight", "shown"), [(math.nan, "nan"), (math.inf, "inf"), ("heavy", "'heavy'")])
def test_a_mix_weight_that_is_no_finite_number_names_the_set(tmp_path: Path, weight: object, shown: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    with pytest.raises(
        ConfigError,
        match=(
            rf"^data\.mix\[1\]\.weight: {shown} is not a finite number > 0\. Fix: give each set a positive weight, "
            r"such as 1\.0 \(weights are relative shares\)\.$"
        ),
    ):
        SFTDataModule(mix=[DataSource(path), DataSource(path, weight=weight)])


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (["yes", "no", ""], "''"),
        (["yes", "no", "  "], "'  '"),
        (["yes", "no", None], "null"),
        # In a column of numbers: NaN is only kept apart from null where no text shares the column.
        ([0, 1, math.nan], "NaN"),
    ],
)
def test_a_classification_label_that_names_no_class_names_file_line_and_field(
    tmp_path: Path, chat_path: str, labels: list, shown: str
) -> None:
    rows = [{"text": text, "label": label} for text, label in zip(["Hi", "Bye", "Fine"], labels, strict=True)]
    data = ClassificationDataModule(write_jsonl(tmp_path / "rows.jsonl", rows), tokenizer_name_or_path=chat_path)
    with pytest.raises(
        ConfigError,
        match=(
            rf"^data\.train_file '.*rows\.jsonl', line 3: 'label' is {shown}, which names no class\. "
            r"Fix: write the row's label, or drop the row"
        ),
    ):
        data.setup("fit")


def held_out_row(rows: int, fraction: float) -> int:
    """The last row ``val_fraction`` holds out (seed 42), checked to sit elsewhere in the file than in its split."""
    _, held_out = holdout_split(rows, fraction, seed=42)
    assert held_out[-1] != len(held_out) - 1
    return int(held_out[-1])


def test_a_held_out_classification_row_names_its_line_in_the_file(tmp_path: Path, chat_path: str) -> None:
    bad = held_out_row(10, 0.2)
    rows = [{"text": "Hi", "label": "no" if index == bad else "yes"} for index in range(10)]
    data = ClassificationDataModule(
        write_jsonl(tmp_path / "rows.jsonl", rows),
        val_fraction=0.2,
        labels=["yes", "maybe"],
        tokenizer_name_or_path=chat_path,
    )
    with pytest.raises(
        ConfigError,
        match=rf"^data\.train_file '.*rows\.jsonl', line {bad + 1}: label 'no' is not one of \['yes', 'maybe'\]",
    ):
        data.setup("fit")


def test_a_held_out_sft_row_names_its_line_in_the_file(tmp_path: Path, chat_path: str) -> None:
    bad = held_out_row(10, 0.2)
    rows = [{"prompt": "Hi", "completion": "" if index == bad else "Hello"} for index in range(10)]
    data = SFTDataModule(
        write_jsonl(tmp_path / "train.jsonl", rows), val_fraction=0.2, tokenizer_name_or_path=chat_path
    )
    with pytest.raises(
        ConfigError,
        match=rf"^data\.train_file '.*train\.jsonl', line {bad + 1}: field 'completion' is an empty response",
    ):
        data.setup("fit")
