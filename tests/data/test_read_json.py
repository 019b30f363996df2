"""JSON and JSON Lines files are read as written: every string the exact string of the file, whatever it looks like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_lora.data import SFTDataModule
from lit_lora.data.files import load_split
from lit_lora.errors import ConfigError
from tests.helpers.sft import write_jsonl

# Strings Arrow's JSON reader takes for timestamps, and strings that look like other types.
DATES = ["1999-12-31", "2024-02-29T10:00:00", "2024-02-29 10:00:00", "2024-02-29T10:00:00Z"]
TIMES = ["10:00:00", "23:59", "00:00:00.000"]
NUMBERS = ["00123", "1.50", "1e5", "-0", "NaN", "true", "null"]
UNICODE = [
    "héllo wörld",
    "日本語のテキスト",
    "emoji 😀👍🏽",
    "right\u2028left \u200b zero width",
    'tab\tquote"back\\slash',
]

ROWS = {
    "prompt_completion": [{"prompt": f"When? {index}", "completion": value} for index, value in enumerate(DATES)],
    "alpaca": [
        {"instruction": "Time?", "input": TIMES[0], "output": TIMES[1]},
        {"instruction": NUMBERS[0], "input": None, "output": NUMBERS[1]},
        {"instruction": "Say", "input": "", "output": UNICODE[1]},
    ],
    "messages": [
        {
            "messages": [
                {"role": "system", "content": TIMES[2]},
                {"role": "user", "content": DATES[0]},
                {"role": "assistant", "content": DATES[1]},
            ]
        },
        {"messages": [{"role": "user", "content": UNICODE[2]}, {"role": "assistant", "content": NUMBERS[2]}]},
    ],
    # Every column holds strings of one look: a date, a time, a number, or none of them.
    "homogeneous": [
        {"id": number, "date": date, "time": time_, "text": text}
        for number, date, time_, text in zip(NUMBERS, DATES * 2, TIMES * 3, UNICODE * 2, strict=False)
    ],
}


def write(path: Path, rows: list[dict], layout: str) -> str:
    if layout == "lines":
        return write_jsonl(path, rows)
    path.write_text(json.dumps(rows, indent=2) if layout == "list" else "".join(map(json.dumps, rows)), "utf-8")
    return str(path)


@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize(("name", "layout"), [("rows.jsonl", "lines"), ("rows.json", "list"), ("rows.json", "one")])
def test_every_string_is_read_as_written(tmp_path: Path, kind: str, name: str, layout: str) -> None:
    rows = ROWS[kind][:1] if layout == "one" else ROWS[kind]  # "one": a .json file of a single object
    read = load_split(write(tmp_path / name, rows, layout), "data.train_file", "train").to_list()
    if kind == "messages":
        assert read == rows
    else:
        # A row that leaves out a field reads it as null, as Arrow holds it.
        assert read == [{column: row.get(column) for column in rows[0]} for row in rows]


def test_a_file_of_many_arrow_blocks_is_read_field_for_field(tmp_path: Path) -> None:
    # About 26 MB in 120,000 lines: a dozen Arrow tables, each a few MiB.
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for index in range(120_000):
            row = {
                "id": f"{index:06d}",
                "prompt": f"Question {index} ü " + "x" * (index % 300),
                "completion": DATES[index % len(DATES)] if index % 3 else f"{index}.0",
            }
            file.write(json.dumps(row, ensure_ascii=index % 2 == 0) + "\n")
    rows = load_split(str(path), "data.train_file", "train")
    assert len(rows) == 120_000
    with path.open(encoding="utf-8") as file:
        for batch in rows.iter(batch_size=20_000):
            for read in zip(*batch.values(), strict=True):
                assert dict(zip(batch, read, strict=True)) == json.loads(next(file))
        assert next(file, None) is None


def test_a_field_of_two_types_is_read_as_written_and_refused_where_text_is_needed(
    tmp_path: Path, plain_path: str
) -> None:
    rows = [
        {"id": 1, "prompt": "Hi", "completion": "Hello"},
        {"id": "b", "prompt": "Hi", "completion": ["Hello", "there"]},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    assert load_split(path, "data.train_file", "train").to_list() == rows
    with pytest.raises(
        ConfigError,
        match=(
            # A list completion is read as turns (conversational prompt/completion): these are not turns.
            r"^data\.train_file '.*train\.jsonl', line 2: completion\[0\] is 'Hello'; each turn needs 'role' "
            r"and 'content'\."
        ),
    ):
        SFTDataModule(path, tokenizer_name_or_path=plain_path).setup("fit")


def test_nested_content_of_two_types_names_the_line_and_turn(tmp_path: Path, chat_path: str) -> None:
    parts = [{"type": "text", "text": "Hello"}]
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": parts}]},
    ]
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    assert load_split(path, "data.train_file", "train").to_list() == rows
    with pytest.raises(
        ConfigError,
        match=r"^data\.train_file '.*chats\.jsonl', line 2: messages\[1\]\.content is list \[\{'type': 'text'",
    ):
        SFTDataModule(path, tokenizer_name_or_path=chat_path).setup("fit")


def test_a_list_item_that_is_no_object_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[{"prompt": "Hi", "completion": "Hello"},\n 3]', encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=(
            r"^data\.train_file '.*rows\.json': row 2 of the list is a JSON int, not an object: 3\. "
            r"Fix: write the file as a list of objects"
        ),
    ):
        load_split(str(path), "data.train_file", "train")


def test_a_byte_order_mark_is_no_part_of_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "Hi", "completion": "Hello"}).encode() + b"\n")
    assert load_split(str(path), "data.train_file", "train").to_list() == [{"prompt": "Hi", "completion": "Hello"}]
