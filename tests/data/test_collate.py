"""Batching: exact padded tensors, and EOS still trained when it doubles as the pad token."""

from __future__ import annotations

import torch

from lit_lora.data.collate import PromptCollator, PromptExample, SFTCollator

EXAMPLES = [
    {"input_ids": [5, 6, 7, 2], "labels": [-100, -100, 7, 2]},
    {"input_ids": [5, 8], "labels": [-100, 8]},
]


def test_right_padding_to_the_longest() -> None:
    batch = SFTCollator(pad_token_id=2)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # The real EOS (id 2, also the pad id) stays trained; only padding is -100.
    assert batch["labels"].tolist() == [[-100, -100, 7, 2], [-100, 8, -100, -100]]
    assert {key: value.dtype for key, value in batch.items()} == dict.fromkeys(batch, torch.long)


def test_pad_to_multiple_of() -> None:
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=3)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 0, 0], [5, 8, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 2, -100, -100], [-100, 8, -100, -100, -100, -100]]


def test_prompts_are_left_padded() -> None:
    batch = PromptCollator(pad_token_id=2)([PromptExample([5, 6, 7], "Hello"), PromptExample([5], "Bye")])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [2, 2, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["reference"] == ["Hello", "Bye"]
