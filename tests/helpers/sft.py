"""Shared helpers for the data tests: a word-level vocabulary, id spelling, file writers.

Each word, punctuation run and newline is one token; spaces are dropped, so expected
ids and labels can be written by hand as space-separated tokens.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lit_lora.data import SFTDataModule
from lit_lora.data.render import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT

SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "user assistant system Hi Hello there How are you Fine thanks Be brief Bye Sum 1 2 3 4 Say yes no ok User "
    "Assistant tool Tool Tools call weather city Paris sunny ( ) = Weather in "
    # The punctuation and keys of the tool calls and definitions the plain layout writes as JSON.
    '{" ": " ", "}} {}}} name arguments type function parameters'
)
PIECE = r"\w+|[^\w\s]+|\n"
VOCAB = {
    token: index
    for index, token in enumerate(
        dict.fromkeys(SPECIAL + re.findall(PIECE, ALPACA_PROMPT + ALPACA_PROMPT_WITH_INPUT + "### \n " + WORDS))
    )
}

CHATML = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# ChatML that lists the tools' names in a system turn of its own and writes each tool
# call as ``call name ( key = value )``.
TOOL_CHATML = (
    "{{ bos_token }}{% if tools %}<|im_start|>system\nTools :{% for tool in tools %} {{ tool['function']['name'] }}"
    "{% endfor %}<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}{% for call in message['tool_calls'] or [] %}call {{ call['function']['name'] }} ("
    "{% for key, value in call['function']['arguments'].items() %} {{ key }} = {{ value }}{% endfor %} )"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# ChatML that refuses system turns, as some models' templates do.
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML
)
# ChatML that HTML-escapes contents, so text spelling a special token is changed.
ESCAPING = CHATML.replace("{{ message['content'] }}", "{{ message['content'] | e }}")
# Renders the newest turn first, so an earlier render is never a prefix of a later one.
REVERSED = "{% for message in messages | reverse %}{{ message['content'] }}\n{% endfor %}"

IGNORE = -100


def ids(text: str) -> list[int]:
    """Ids of space-separated tokens, e.g. ``ids("<s> Hi \\n")``; unknown words fail loudly."""
    return [VOCAB[token] for token in text.split(" ")]


def masked(text: str) -> list[int]:
    """Labels of untrained tokens: one -100 per space-separated token."""
    return [IGNORE] * len(text.split(" "))


def build_tokenizer(eos_token: str, chat_template: str | None, adds_bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``VOCAB`` with BOS ``<s>`` and no pad token.

    Args:
        eos_token: ``<|im_end|>`` or ``</s>``.
        chat_template: A Jinja chat template, or ``None`` for none.
        adds_bos: Whether encoding with special tokens puts ``<s>`` first.
    """
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="removed", invert=True)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", VOCAB["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token=eos_token,
        unk_token="<unk>",
        additional_special_tokens=[token for token in SPECIAL if token not in ("<unk>", "<s>", eos_token)],
        chat_template=chat_template,
    )


def save_tokenizer(folder: Path, eos_token: str, chat_template: str | None) -> str:
    """Save ``build_tokenizer(eos_token, chat_template)`` to ``folder`` and return its path."""
    build_tokenizer(eos_token, chat_template).save_pretrained(folder)
    return str(folder)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def tokenized(
    tmp_path: Path, tokenizer: str, rows: list[dict[str, Any]], **settings: Any
) -> list[dict[str, list[int]]]:
    """The training examples an ``SFTDataModule`` makes of ``rows``, in file order."""
    data = SFTDataModule(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer_name_or_path=tokenizer, **settings)
    data.setup("fit")
    return data.dataset("train").to_list()
