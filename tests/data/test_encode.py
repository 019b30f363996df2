"""Tokenizing segments: BOS detection, label alignment, truncation and the supervised count."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from lit_lora.data.encode import encode_segments, sequence_prefix
from lit_lora.data.render import Segment, render_chat, render_plain_prompt_completion
from tests.helpers.sft import build_tokenizer, ids, masked


def test_sequence_prefix_is_the_bos_the_tokenizer_adds(chat_tokenizer: PreTrainedTokenizerBase) -> None:
    assert sequence_prefix(chat_tokenizer) == ids("<s>")
    assert sequence_prefix(build_tokenizer("</s>", None, adds_bos=False)) == []


def test_segments_are_tokenized_separately_and_labelled(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    segments = [Segment("Hi", False), Segment("Hello there", True), Segment("\n", False)]
    assert encode_segments(plain_tokenizer, segments, ids("<s>")) == {
        "input_ids": ids("<s> Hi Hello there \n"),
        "labels": masked("<s> Hi") + ids("Hello there") + masked("\n"),
        "num_supervised": 2,
        "truncated": False,
    }


def test_truncation_keeps_the_first_max_length_tokens(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    segments = [Segment("Hi", False), Segment("Hello there", True)]
    assert encode_segments(plain_tokenizer, segments, ids("<s>"), max_length=3) == {
        "input_ids": ids("<s> Hi Hello"),
        "labels": masked("<s> Hi") + ids("Hello"),
        "num_supervised": 1,
        "truncated": True,
    }


def test_position_zero_is_never_counted_as_supervised() -> None:
    # Without a BOS, a trained first token has no earlier token to be predicted from.
    tokenizer = build_tokenizer("</s>", None, adds_bos=False)
    example = encode_segments(tokenizer, [Segment("Hello", True)], sequence_prefix(tokenizer))
    assert example == {"input_ids": ids("Hello"), "labels": ids("Hello"), "num_supervised": 0, "truncated": False}


def test_plain_text_is_never_stripped() -> None:
    assert render_plain_prompt_completion(" Hi \n", "  Hello\n\n", "</s>") == [
        Segment(" Hi \n", False),
        Segment("  Hello\n\n</s>", True),
    ]


def test_chat_segments_end_with_the_templates_end_of_turn(chat_tokenizer: PreTrainedTokenizerBase) -> None:
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello "}]
    assert render_chat(conversation, chat_tokenizer) == [
        Segment("<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        Segment(" Hello <|im_end|>\n", True),
    ]
