"""Tokenizing rendered segments into input ids and labels.

Each segment is tokenized on its own and the pieces concatenated. At inference the
prompt is tokenized on its own and the model continues from exactly those tokens;
tokenizing the joined text instead can merge a token across the prompt/response
boundary, training the model on a split it never sees when generating.

A segment with literal spans (data that spells a special token, see
``lit_lora.data.literal_text``) is tokenized so that those spans stay plain text.

Labels are aligned with ``input_ids`` (not shifted; the model shifts them): the token
id where the segment is trained, -100 elsewhere.
"""

from __future__ import annotations

from typing import TypedDict

from transformers import PreTrainedTokenizerBase

from lit_lora.data.literal_text import encode_literal
from lit_lora.data.render import Segment

IGNORE_INDEX = -100  # the label cross-entropy skips


class Example(TypedDict):
    """One tokenized training example.

    Attributes:
        input_ids: Token ids, length T.
        labels: Length T; the token id where trained, -100 elsewhere.
        num_supervised: How many tokens the loss counts: trained labels after position 0,
            which no earlier token predicts.
        truncated: Whether tokens past ``max_length`` were cut off.
    """

    input_ids: list[int]
    labels: list[int]
    num_supervised: int
    truncated: bool


def sequence_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids the tokenizer itself puts before every sequence: its BOS, or nothing.

    Found by encoding a word with and without special tokens, so it follows the
    tokenizer's post-processor rather than guessing from ``bos_token``.

    Args:
        tokenizer: The tokenizer to inspect.
    """
    with_special = tokenizer("x")["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    # Special tokens only wrap the text, so the bare ids appear whole inside the others.
    start = next(i for i in range(len(with_special) - len(bare) + 1) if with_special[i : i + len(bare)] == bare)
    return with_special[:start]


def encode_segments(
    tokenizer: PreTrainedTokenizerBase,
    segments: list[Segment],
    prefix: list[int],
    max_length: int | None = None,
) -> Example:
    """Tokenize segments one by one, label the trained ones and truncate.

    Args:
        tokenizer: The tokenizer; called with ``add_special_tokens=False``.
        segments: Rendered text pieces, in order.
        prefix: Untrained ids to put first, exactly once: the tokenizer's BOS in plain
            mode and for ``text`` documents, nothing in chat mode (the template writes
            BOS itself).
        max_length: Keep only the first ``max_length`` tokens; ``None`` keeps all.
    """
    # One batched call for all segments; transformers 5 raises on an empty batch.
    texts = [segment.text for segment in segments]
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
    for segment, piece in zip(segments, pieces, strict=True):
        piece = encode_literal(tokenizer, segment) if segment.literal else piece
        input_ids += piece
        labels += piece if segment.trained else [IGNORE_INDEX] * len(piece)
    truncated = max_length is not None and len(input_ids) > max_length
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "num_supervised": sum(label != IGNORE_INDEX for label in labels[1:]),
        "truncated": truncated,
    }
