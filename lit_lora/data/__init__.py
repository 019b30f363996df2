"""Supervised fine-tuning data: reading files, rendering prompts and responses, tokenizing, batching."""

from lit_lora.data.classification import ClassificationDataModule
from lit_lora.data.collate import PromptCollator, PromptExample, SFTCollator
from lit_lora.data.encode import IGNORE_INDEX, Example, encode_segments, sequence_prefix
from lit_lora.data.files import check_data_path, load_split
from lit_lora.data.formats import (
    FORMAT_COLUMNS,
    detect_format,
    resolve_format,
    to_conversation,
)
from lit_lora.data.preference import PairCollator, PreferenceDataModule
from lit_lora.data.render import Segment, render_chat, resolve_template
from lit_lora.data.sft import SFTDataModule

__all__ = [
    "FORMAT_COLUMNS",
    "IGNORE_INDEX",
    "ClassificationDataModule",
    "Example",
    "PairCollator",
    "PreferenceDataModule",
    "PromptCollator",
    "PromptExample",
    "SFTCollator",
    "SFTDataModule",
    "Segment",
    "check_data_path",
    "detect_format",
    "encode_segments",
    "load_split",
    "render_chat",
    "resolve_format",
    "resolve_template",
    "sequence_prefix",
    "to_conversation",
]
