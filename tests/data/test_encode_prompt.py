"""``SFTDataModule.encode_prompt``: a row without its response gives the prompt ids training cuts from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lit_lora.data import SFTDataModule
from lit_lora.errors import ConfigError
from tests.helpers.sft import write_jsonl

CONVERSATION = [
    {"role": "system", "content": "Be brief"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "How are you"},
]
# Each format: a row with its response, and the same row without it.
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "prompt_completion": ({"prompt": "Hi", "completion": "Hello"}, {"prompt": "Hi"}),
    "alpaca": (
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
        {"instruction": "Add", "input": "1 and 2"},
    ),
    "messages": (
        {"messages": [*CONVERSATION, {"role": "assistant", "content": "Fine"}]},
        {"messages": CONVERSATION},
    ),
}


@pytest.mark.parametrize("template", ["chat", "plain"])
@pytest.mark.parametrize("format", list(ROWS))
def test_encode_prompt_gives_the_ids_of_prompt_examples(
    tmp_path: Path, chat_path: str, format: str, template: str
) -> None:
    with_response, without = ROWS[format]
    path = write_jsonl(tmp_path / "rows.jsonl", [with_response])
    data = SFTDataModule(path, format=format, template=template, tokenizer_name_or_path=chat_path)
    # A module not set up loads its tokenizer itself.
    alone = SFTDataModule(path, format=format, template=template, tokenizer_name_or_path=chat_path)
    assert alone.encode_prompt(without, format) == data.prompt_examples("train")[0].prompt_ids


def test_encode_prompt_refuses_a_format_without_prompts(tmp_path: Path, plain_path: str) -> None:
    data = SFTDataModule(write_jsonl(tmp_path / "rows.jsonl", [ROWS["alpaca"][0]]), tokenizer_name_or_path=plain_path)
    with pytest.raises(ConfigError, match="prompt_completion, alpaca or messages"):
        data.encode_prompt({"text": "x"}, "text")
