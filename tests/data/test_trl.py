"""lit_lora's label masks against TRL's ``SFTTrainer`` data path, token for token, on SmolLM2's tokenizer.

TRL tokenizes the rows when the trainer is built (``completion_only_loss``, its
default for prompt-completion data); a tiny random model on the CPU stands in for
SmolLM2's weights, which tokenization never reads. The masks agree, with the
deliberate differences asserted token for token:

* lit_lora renders a prompt/completion row of strings with the chat template when the
  tokenizer has one (TRL tokenizes strings raw); with ``data.template: plain`` it
  matches TRL's raw ``prompt + completion + EOS``.
* lit_lora trains every assistant turn, so an assistant turn inside a conversational
  prompt is trained too (TRL trains the completion only); ``"train": false`` on that
  turn gives TRL's mask.

Both train the EOS (plain) or the template's end of turn (chat), and neither doubles a
BOS: SmolLM2 has none, so the ids agree from the first token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tests.helpers.sft import tokenized

trl = pytest.importorskip("trl", reason="needs `pip install trl==1.16.0` (the test extra) for the TRL cross-check")

SYSTEM = {"role": "system", "content": "Be brief."}
QUESTION = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "4"}
TWO_EXCHANGES = {
    "prompt": [SYSTEM, QUESTION, ANSWER, {"role": "user", "content": "And 3+3?"}],
    "completion": [{"role": "assistant", "content": "6"}],
}


def trl_example(tokenizer_path: str, row: dict[str, Any], tmp_path: Path) -> dict[str, list[int]]:
    """The input ids and labels TRL's SFTTrainer prepares for one row."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, max_length=None)
    trainer = trl.SFTTrainer(
        model=LlamaForCausalLM(config), args=args, train_dataset=Dataset.from_list([row]), processing_class=tokenizer
    )
    [example] = trainer.train_dataset.select_columns(["input_ids", "labels"]).to_list()
    return example


def test_string_rows_match_in_plain_mode(tmp_path: Path, smollm2_path: str) -> None:
    row = {"prompt": "What is 2+2?", "completion": " 4"}
    [ours] = tokenized(tmp_path, smollm2_path, [row], template="plain")
    theirs = trl_example(smollm2_path, row, tmp_path)
    assert ours == theirs
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert tokenizer.decode([label for label in ours["labels"] if label != -100]) == " 4<|im_end|>"


def test_string_rows_in_chat_mode_match_trl_on_the_same_turns(tmp_path: Path, smollm2_path: str) -> None:
    [ours] = tokenized(tmp_path, smollm2_path, [{"prompt": QUESTION["content"], "completion": ANSWER["content"]}])
    assert ours == trl_example(smollm2_path, {"prompt": [QUESTION], "completion": [ANSWER]}, tmp_path)


def test_conversational_rows_with_a_system_turn_match(tmp_path: Path, smollm2_path: str) -> None:
    row = {"prompt": [SYSTEM, QUESTION], "completion": [ANSWER]}
    [ours] = tokenized(tmp_path, smollm2_path, [row])
    assert ours == trl_example(smollm2_path, row, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert tokenizer.decode([label for label in ours["labels"] if label != -100]) == "4<|im_end|>\n"


def test_two_exchanges_differ_only_in_the_earlier_reply(tmp_path: Path, smollm2_path: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    theirs = trl_example(smollm2_path, TWO_EXCHANGES, tmp_path)
    [ours] = tokenized(tmp_path, smollm2_path, [TWO_EXCHANGES])
    assert ours["input_ids"] == theirs["input_ids"]
    differing = [index for index, (a, b) in enumerate(zip(ours["labels"], theirs["labels"], strict=True)) if a != b]
    assert tokenizer.decode([ours["labels"][index] for index in differing]) == "4<|im_end|>\n"
    assert [theirs["labels"][index] for index in differing] == [-100, -100, -100]
    assert differing == list(range(differing[0], differing[0] + 3))
    assert tokenizer.decode([label for label in theirs["labels"] if label != -100]) == "6<|im_end|>\n"

    context_only = {
        **TWO_EXCHANGES,
        "prompt": [SYSTEM, QUESTION, {**ANSWER, "train": False}, TWO_EXCHANGES["prompt"][3]],
    }
    [ours] = tokenized(tmp_path, smollm2_path, [context_only])
    assert ours == theirs
