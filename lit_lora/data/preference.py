"""Preference pairs for DPO: a prompt with a chosen and a rejected response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_warn

from lit_lora.data.collate import SFTCollator
from lit_lora.data.diagnose import row_location
from lit_lora.data.encode import Example
from lit_lora.data.formats import Conversation, prompt_completion_conversation
from lit_lora.data.sft import SFTDataModule
from lit_lora.data.stats import token_lengths
from lit_lora.errors import ConfigError

# The format of preference rows, and the internal name under which their rejected side is rendered.
PREFERENCE = "preference"
_REJECTED = "preference (rejected response)"
_BATCH = 1024  # pairs compared at a time


def identical_pairs(examples: Dataset) -> list[int]:
    """The positions of the encoded pairs whose two sides are the same tokens with the same ones trained.

    Such a pair gives DPO nothing to learn: its loss is the same whatever the model,
    so its gradient is zero. Pairs with no trained token are left out (they are dropped).

    Args:
        examples: Encoded pairs, as :meth:`PreferenceDataModule.encode_row` makes them.
    """
    columns = ["input_ids", "labels", "rejected_input_ids", "rejected_labels", "num_supervised"]
    same = []
    for start, batch in enumerate(examples.select_columns(columns).iter(batch_size=_BATCH)):
        for offset, (ids, labels, rejected_ids, rejected_labels, supervised) in enumerate(
            zip(*(batch[column] for column in columns))
        ):
            if supervised and ids == rejected_ids and labels == rejected_labels:
                same.append(start * _BATCH + offset)
    return same


class PairCollator:
    """Batches preference pairs into one ``(2B, T)`` batch: the B chosen rows, then the B rejected.

    One padded batch lets a single forward pass score both sides.

    Args:
        pad_token_id: The id written into ``input_ids`` at padded positions.
        pad_to_multiple_of: As in :class:`~lit_lora.data.SFTCollator`.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.collate = SFTCollator(pad_token_id, pad_to_multiple_of)

    def __call__(self, pairs: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
        rejected = [{"input_ids": p["rejected_input_ids"], "labels": p["rejected_labels"]} for p in pairs]
        return self.collate([*pairs, *rejected])


class PreferenceDataModule(SFTDataModule):
    """Preference data for DPO: rows with ``prompt``, ``chosen`` and ``rejected``.

    Each side is rendered exactly as supervised fine-tuning renders a prompt and its
    response (chat template or plain template, see ``lit_lora.data.render``), and only
    the response is labelled: the prompt is masked on both sides. The prompt and
    responses are text, or lists of role/content turns (the prompt may hold a system
    turn and earlier dialogue). A pair is dropped, with a warning, when either side
    has no response token left within ``max_length``. A pair whose sides encode the
    same (see :func:`identical_pairs`) is kept, but counted in ``identical`` and warned about.

    Batches hold the chosen sequences and then the rejected ones (see
    :class:`PairCollator`); ``batch_size`` counts pairs. Everything else is
    :class:`~lit_lora.data.SFTDataModule`'s, with ``format`` fixed to ``preference``
    and without ``packing`` or ``train_on_prompt``. Statistics and length grouping
    read the chosen side; ``predict`` and generation previews use the prompt, with
    the chosen response as the reference.
    """

    format_columns: ClassVar[Mapping[str, Sequence[str]]] = {PREFERENCE: ("prompt", "chosen", "rejected")}
    example_columns: ClassVar[tuple[str, ...]] = ("input_ids", "labels", "rejected_input_ids", "rejected_labels")
    # Each example is two sequences in the batch, which the memory estimate counts.
    sequences_per_example: ClassVar[int] = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Pairs whose sides encode the same (see identical_pairs), per file read ("data.train_file 'x.jsonl'").
        self.identical: dict[str, int] = {}
        if self.packing:
            raise ConfigError("data.packing: preference pairs are not packed. Fix: set data.packing: false.")
        if self.train_on_prompt:
            raise ConfigError(
                "data.train_on_prompt: DPO compares the responses only, so the prompt is never scored. "
                "Fix: set data.train_on_prompt: false."
            )

    def to_conversation(self, row: Mapping[str, Any], format: str) -> Conversation:
        """The prompt with the chosen response, or the rejected one for its internal format."""
        if format == _REJECTED:
            return prompt_completion_conversation(row, "rejected")
        return prompt_completion_conversation(row, "chosen")

    def longest_examples(self) -> list[int]:
        """The longest kept example of each prepared split, of either side.

        The statistics describe the chosen side; a batch is as long as its longest side.
        """
        rejected = [
            int(token_lengths(examples, "rejected_input_ids").max())
            for examples in map(self.dataset, self.stats)
            if examples is not None and len(examples)
        ]
        return super().longest_examples() + rejected

    def check_examples(self, examples: Dataset, source: str, path: str) -> None:
        """Count the pairs whose sides encode the same, per file, and warn about them."""
        same = identical_pairs(examples)
        self.identical[source] = len(same)
        if same:
            rank_zero_warn(
                f"{source}: {len(same)} of {len(examples)} pairs have a 'chosen' that encodes the same as "
                f"their 'rejected' (the same response, or the same up to data.max_length), first at "
                f"{row_location(path, same[0])}; DPO learns nothing from them. Fix: drop those rows, or give "
                "them a different rejected response."
            )

    def collator(self) -> PairCollator:
        """Batches pairs: the chosen sequences, then the rejected (see :class:`PairCollator`)."""
        return PairCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def encode_row(self, row: dict[str, Any], index: int, format: str, source: str, path: str) -> Example:
        """Encode both sides of a pair; the rejected side's columns are prefixed ``rejected_``."""
        chosen = super().encode_row(row, index, format, source, path)
        rejected = super().encode_row(row, index, _REJECTED, source, path)
        return {
            **chosen,
            "rejected_input_ids": rejected["input_ids"],
            "rejected_labels": rejected["labels"],
            # A pair trains only when both sides keep a response token.
            "num_supervised": min(chosen["num_supervised"], rejected["num_supervised"]),
            "truncated": chosen["truncated"] or rejected["truncated"],
        }
