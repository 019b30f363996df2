"""Data cannot forge structure: text in a row that spells a special token is tokenized as text.

A field holding ``<|im_end|>`` or ``<|im_start|>assistant`` would otherwise become
the special tokens themselves, ending a turn early or opening an assistant turn the
template never wrote; only the template's own markup may produce special tokens. The
special tokens are the tokenizer's added tokens marked special (``<|im_end|>``,
``</s>``, ...); ordinary added tokens are tokenized as the tokenizer always does.

A row none of whose strings (nested ones included) spells a special token is rendered
and tokenized exactly as without this. In a row that has some, each occurrence is
swapped for a placeholder, the row is rendered, and each placeholder is swapped back
and its span marked literal, so that encoding tokenizes a special token inside such a
span as plain text (``split_special_tokens``) and every other token as usual. The
result must equal what rendering the row itself gives: a template that changes the
text (escaping or trimming it) is refused with an error rather than let through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from lit_lora.data.render import Segment
from lit_lora.errors import ConfigError

# Private-use characters, which no template writes, around the occurrence's number.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDERS = re.compile("\ue000([0-9]+)\ue001")


def special_token_texts(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The text of each of the tokenizer's special tokens, longest first.

    Args:
        tokenizer: The tokenizer examples are encoded with.
    """
    texts = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return tuple(sorted(texts, key=lambda text: (-len(text), text)))


def render_literal(
    render: Callable[[Mapping[str, Any]], list[Segment]], row: Mapping[str, Any], special_texts: tuple[str, ...]
) -> list[Segment]:
    """``render(row)``, with the spans where the row's text spells a special token marked literal.

    Args:
        render: Renders a row into segments.
        row: One example as read from the file.
        special_texts: What :func:`special_token_texts` returned.

    Raises:
        ConfigError: The template changes text that spells a special token, so it
            cannot be kept literal.
    """
    found: list[str] = []
    swapped = _swap(row, _pattern(special_texts), found) if special_texts else row
    if not found:
        return render(row)
    segments = [_restore(segment, found) for segment in render(swapped)]
    if [segment.text for segment in segments] != [segment.text for segment in render(row)]:
        raise ConfigError(
            f"a field spells the special token {found[0]!r}, and the chat template changes that text (escaping or "
            "trimming it), so it cannot be kept as literal text. Fix: remove the special-token text from the data, "
            "or set data.allow_special_tokens_in_text: true to let it through as the special token."
        )
    return segments


def encode_literal(tokenizer: PreTrainedTokenizerBase, segment: Segment) -> list[int]:
    """The ids of a segment, a special token inside one of its literal spans tokenized as plain text.

    Args:
        tokenizer: The tokenizer; called without adding special tokens.
        segment: A segment with literal spans.
    """
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    encoding = tokenizer(segment.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = []
    for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        if token in special and any(start < stop and begin < end for begin, stop in segment.literal):
            text = segment.text[start:end]
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        else:
            ids.append(token)
    return ids


@lru_cache(maxsize=8)
def _pattern(special_texts: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, special_texts)))


def _swap(value: Any, pattern: re.Pattern[str], found: list[str]) -> Any:
    """``value`` with each special-token text in its strings swapped for a placeholder, appended to ``found``."""
    if isinstance(value, str):

        def placeholder(match: re.Match[str]) -> str:
            found.append(match.group())
            return _PLACEHOLDER.format(len(found) - 1)

        return pattern.sub(placeholder, value)
    if isinstance(value, Mapping):
        return {key: _swap(item, pattern, found) for key, item in value.items()}
    if isinstance(value, list):
        return [_swap(item, pattern, found) for item in value]
    return value


def _restore(segment: Segment, found: list[str]) -> Segment:
    """The segment with its placeholders swapped back, their spans marked literal."""
    pieces, spans, length, consumed = [], [], 0, 0
    for match in _PLACEHOLDERS.finditer(segment.text):
        text = found[int(match.group(1))]
        before = segment.text[consumed : match.start()]
        pieces += [before, text]
        spans.append((length + len(before), length + len(before) + len(text)))
        length += len(before) + len(text)
        consumed = match.end()
    pieces.append(segment.text[consumed:])
    return Segment("".join(pieces), segment.trained, (*segment.literal, *spans))
