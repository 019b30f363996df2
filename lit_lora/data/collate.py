"""Padding examples into batches: right-padded for training, left-padded prompts for generation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from lit_lora.data.encode import IGNORE_INDEX


class PromptExample(NamedTuple):
    """A prompt to generate from, and the response the data holds for it.

    Attributes:
        prompt_ids: Token ids up to where the last assistant turn starts, tokenized as in training.
        reference: The text of that last assistant turn.
    """

    prompt_ids: list[int]
    reference: str


def padded_length(lengths: Sequence[int], multiple: int | None) -> int:
    """The padded length T of a batch: its longest row, rounded up to a multiple of ``multiple`` if set."""
    longest = max(lengths)
    return -(-longest // multiple) * multiple if multiple else longest


class SFTCollator:
    """Right-pads training examples to the longest in the batch.

    Labels at padding are -100 because the collator knows where padding is, never
    because a token equals the pad id: pad is often EOS, and EOS must stay trained.

    Args:
        pad_token_id: The id written into ``input_ids`` at padded positions.
        pad_to_multiple_of: Round the padded length T up to a multiple of this (e.g. 8,
            for tensor-core friendly shapes); ``None`` pads to the longest example only.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """Batch examples holding ``input_ids`` and ``labels`` into (B, T) LongTensors.

        Args:
            examples: Tokenized examples; other keys are ignored.

        Returns:
            ``input_ids`` (pad id at padding), ``attention_mask`` (1 on tokens, 0 on
            padding) and ``labels`` (-100 at padding).
        """
        length = padded_length([len(example["input_ids"]) for example in examples], self.pad_to_multiple_of)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            input_ids[row, :size] = torch.tensor(example["input_ids"], dtype=torch.long)
            attention_mask[row, :size] = 1
            labels[row, :size] = torch.tensor(example["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PromptCollator:
    """Left-pads prompts so that generation continues every row from its last column.

    Args:
        pad_token_id: The id written into ``input_ids`` at padded positions.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[PromptExample]) -> dict[str, torch.Tensor | list[str]]:
        """Batch prompts into (B, T) LongTensors, keeping their references alongside.

        Args:
            examples: Prompts with their reference responses.

        Returns:
            ``input_ids`` and ``attention_mask`` (0 on the left padding), and ``reference``,
            the B reference texts.
        """
        length = max(len(example.prompt_ids) for example in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            start = length - len(example.prompt_ids)
            input_ids[row, start:] = torch.tensor(example.prompt_ids, dtype=torch.long)
            attention_mask[row, start:] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "reference": [example.reference for example in examples],
        }
