"""The Lightning data module for supervised fine-tuning on prompt/response data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from datasets import Dataset, concatenate_datasets
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Sampler

from lit_lora.artifacts.tokenizer import one_thread_per_process
from lit_lora.data.base import STAGE_SPLITS, Split, check_at_least
from lit_lora.data.collate import PromptCollator, PromptExample, SFTCollator
from lit_lora.data.conversation import ConversationDataModule
from lit_lora.data.files import load_split
from lit_lora.data.formats import resolve_format
from lit_lora.data.mixing import (
    DataSource,
    MixSampler,
    check_mix_sizes,
    check_training_sets,
    check_training_source,
    rename_fields,
)
from lit_lora.data.packing import PackedCollator, PackedDataset, PackingSampler, check_packing_settings
from lit_lora.data.sampler import LengthGroupedSampler
from lit_lora.data.stats import SplitStats, format_stats, split_stats, token_lengths
from lit_lora.errors import ConfigError


@dataclass
class _Part:
    """Rows of one file or split, as read and as tokenized, in the same order."""

    rows: Dataset
    examples: Dataset
    format: str
    source: str
    prompts: list[PromptExample] | None = None


class SFTDataModule(ConversationDataModule):
    """Supervised fine-tuning data: prompt/response examples, tokenized with masked prompts.

    Reads ``prompt_completion``, ``alpaca``, ``messages``, ``sharegpt`` or ``text`` data from local
    ``.jsonl``/``.json``/``.csv``/``.parquet`` files or hub datasets, renders each
    example with the tokenizer's chat template (or a plain template), and labels only
    the responses. See ``lit_lora.data.render`` for exactly what is rendered.

    To add a format, subclass, add its required columns to ``format_columns`` and
    handle it in ``to_conversation``; ``render`` and ``encode`` can be overridden to
    change how examples become text and tokens, ``encode_row``, ``example_columns`` and
    ``collator`` to carry more per example (``lit_lora.data.PreferenceDataModule``
    pairs two responses this way).

    The settings of every task's data module (``val_file``, ``val_fraction``,
    ``test_file``, ``predict_file``, ``effective_batch_size``, ``eval_batch_size``,
    ``num_workers``, ``seed``, the tokenizer) are :class:`~lit_lora.data.base.TaskDataModule`'s;
    ``predict`` generates for each example cut before its last assistant turn, which
    becomes the reference.

    Args:
        train_file: Training data: a local ``.jsonl``/``.json``/``.csv``/``.parquet``
            file, or a hub dataset id ``name`` or ``name:split`` (default split
            ``train``). Set this or ``mix``.
        format: How the data is laid out: ``prompt_completion`` (columns prompt,
            completion: strings, or lists of turns), ``alpaca`` (instruction, optional
            input, output), ``messages`` (a list of role/content turns, optional tools),
            ``sharegpt`` (conversations of from/value turns), ``text`` (raw documents,
            every token trained), a format a subclass adds to ``format_columns``, or
            ``auto`` to tell from the columns. See ``lit_lora.data.formats``.
        template: ``chat`` renders with the tokenizer's chat template, ``plain`` with
            the fixed plain templates, ``auto`` uses chat when the tokenizer has one.
        max_length: Longest example in tokens; longer ones are cut at the end, and an
            example left with no response token is dropped with a warning.
        train_on_prompt: Also train on prompt tokens (system and user turns, template
            text), not just on the responses.
        system_prompt: A system turn put first in every conversation that has none
            (plain mode: the text and a blank line); ``text`` documents are left as written.
        allow_special_tokens_in_text: Let text in the data that spells a special token
            (``<|im_end|>``) become that token. Off: it stays plain text, so no row can end
            a turn or open one; only the template's markup makes special tokens.
        batch_size: Training examples per batch; with ``packing``, packed sequences per batch.
            ``auto`` picks the largest power of two up to ``effective_batch_size`` whose
            estimated memory at ``max_length`` fits the device once the model is loaded,
            and sets the trainer's gradient accumulation to reach ``effective_batch_size``
            (see ``lit_lora.training.planning``); both are printed.
        num_proc: Processes for tokenizing the data; unset uses one. Results are cached
            by ``datasets``, so a second run with the same settings skips tokenizing.
        pad_to_multiple_of: Round each batch's padded length up to a multiple of this
            (8 suits tensor cores); unset pads to the longest example in the batch.
        packing: Pack several training examples into each sequence of up to
            ``max_length`` tokens (best fit, examples never split unless
            ``packing_split``), so no compute goes to padding. The examples do not
            attend to each other and their positions restart, so the loss is that of
            the same examples unpacked; the model's attention must honour
            ``position_ids`` (eager and sdpa do; flash_attention_2 with ``batch_size:
            1`` only). Each epoch repacks from its shuffle (examples of equal length
            trade packs) and shuffles the packs. Validation and test batches are not packed.
        packing_split: With ``packing``, fill every packed sequence to exactly
            ``max_length`` tokens (but an epoch's last): the shuffled examples are laid
            end to end and cut at the sequence boundaries. The piece of a cut example in
            the next sequence is trained as an example of its own (positions from 0, no
            attention to its first part), and its first token is not a target, as its
            predictor is in the other sequence: one supervised token lost per cut.
        group_by_length: Batch training examples of similar length together (within
            groups of 4 batches of the shuffled order) to cut padding: the lighter
            alternative to ``packing``, which it cannot be combined with.
        fields: Column renames for ``train_file``, ``val_file``, ``test_file`` and
            ``predict_file``, from the name the format expects to the name in the
            files, e.g. ``{prompt: question, completion: answer}``.
        mix: Several training sets instead of ``train_file``, each with its own
            ``path``, ``format``, ``fields`` and sampling ``weight``: every epoch draws
            as many examples as the sets hold together, each from set ``i`` with
            probability ``weight_i / sum(weights)`` (without repeats inside a set until
            it is used up). Validation comes from ``val_file``; ``val_fraction``,
            ``packing`` and ``group_by_length`` do not apply to a mix.
        **kwargs: The settings of :class:`~lit_lora.data.base.TaskDataModule`.
    """

    # Column renames happen before encoding; a mix's sets are read like single files.
    loader_settings: ClassVar[tuple[str, ...]] = (
        *ConversationDataModule.loader_settings,
        "num_proc",
        "pad_to_multiple_of",
        "packing",
        "packing_split",
        "group_by_length",
        "fields",
        "mix",
    )

    def __init__(
        self,
        train_file: str | None = None,
        *,
        format: str = "auto",
        template: Literal["auto", "chat", "plain"] = "auto",
        max_length: int = 2048,
        train_on_prompt: bool = False,
        system_prompt: str | None = None,
        allow_special_tokens_in_text: bool = False,
        batch_size: int | Literal["auto"] = 4,
        num_proc: int | None = None,
        pad_to_multiple_of: int | None = None,
        packing: bool = False,
        packing_split: bool = False,
        group_by_length: bool = False,
        fields: dict[str, str] | None = None,
        mix: list[DataSource] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_file=train_file, max_length=max_length, batch_size=batch_size, **kwargs)
        # Only a tokenizer and template settings, no data at all: a module that encodes
        # prompts for generation; the missing training set is refused once it is read.
        held_out = self.val_fraction or self.val_file or self.test_file or self.predict_file
        prompts_only = self.tokenizer_name_or_path is not None and not (
            mix or fields or held_out or packing or group_by_length
        )
        if train_file is not None or not prompts_only:
            check_training_sets(train_file, mix, self.val_fraction, packing, group_by_length, self.format_columns)
        check_packing_settings(packing, packing_split, group_by_length)
        self.set_rendering(format, template, train_on_prompt, system_prompt, allow_special_tokens_in_text)
        check_at_least(num_proc=(num_proc, 1), pad_to_multiple_of=(pad_to_multiple_of, 1))
        self.num_proc = num_proc
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing
        self.packing_split = packing_split
        self.group_by_length = group_by_length
        self.fields = dict(fields or {})
        self.mix = list(mix or [])
        # Examples dropped for lack of a trained token within max_length, per split.
        self.dropped: dict[str, int] = {}
        # Statistics of each split read from its own data (see lit_lora.data.stats).
        self.stats: dict[str, SplitStats] = {}
        self._splits: dict[str, _Part | None] = {}
        # Kept training examples per set of ``mix``, in order.
        self._mix_sizes: list[int] = []

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer, then read, check and tokenize the data the stage needs; log the statistics of ``fit``.

        Args:
            stage: ``fit``, ``validate``, ``test``, ``predict``, or ``None`` for all.
        """
        super().setup(stage)
        if stage == "fit":
            fit_stats = {split: self.stats[split] for split in STAGE_SPLITS["fit"] if split in self.stats}
            rank_zero_info(f"Data statistics:\n{format_stats(fit_stats)}")

    def train_dataset(self) -> Dataset | PackedDataset:
        """The training examples, as packs of them with ``packing``."""
        return PackedDataset(self.dataset("train")) if self.packing else self.dataset("train")

    def train_sampler(self, dataset: Dataset | PackedDataset) -> Sampler[int]:
        """The training order, fixed by ``seed``: drawn from ``mix``, packed, grouped by length, or shuffled.

        Args:
            dataset: What :meth:`train_dataset` returned.
        """
        if self.mix:
            return MixSampler(self._mix_sizes, [source.weight for source in self.mix], self.seed)
        if self.packing:
            lengths = token_lengths(self.dataset("train")).tolist()
            return PackingSampler(lengths, self.max_length, self.seed, split=self.packing_split)
        if self.group_by_length:
            return LengthGroupedSampler(token_lengths(dataset).tolist(), self.batch_size, self.seed)
        return super().train_sampler(dataset)

    def train_collator(self) -> SFTCollator | PackedCollator:
        """What batches training examples: a :class:`PackedCollator` with ``packing``, else :meth:`collator`."""
        if self.packing:
            return PackedCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        return self.collator()

    def predict_dataloader(self) -> DataLoader | list:
        """Left-padded prompt batches with their ``reference`` texts, for generation."""
        return self.eval_loader(self.prompt_examples("predict"), PromptCollator(self.tokenizer.pad_token_id))

    def longest_batch_length(self) -> int:
        """Tokens per sequence of the longest batch the prepared splits can make.

        Batches are padded to their longest example, so memory peaks at the batch
        holding the longest one: that example's length (rounded up to
        ``pad_to_multiple_of``), or ``max_length`` with packing, which fills
        sequences to it, or when no split is prepared yet.
        """
        if self.packing:
            return self.max_length
        multiple = self.pad_to_multiple_of or 1
        return min(self.max_length, -(-super().longest_batch_length() // multiple) * multiple)

    def longest_examples(self) -> list[int]:
        """The token length of the longest kept example of each prepared split, from its statistics."""
        return [stats.max_length for stats in self.stats.values()]

    def dataset(self, split: Split) -> Dataset | None:
        """The tokenized examples of a split (``input_ids``, ``labels``), in file order.

        Args:
            split: ``train``, ``validation``, ``test`` or ``predict``.

        Returns:
            The examples kept after dropping those with nothing to train, or ``None``
            when the split has no data.
        """
        part = self._split(split)
        return None if part is None else part.examples

    def prompt_examples(self, split: Split) -> list[PromptExample]:
        """The prompt and reference response of every example kept in a split.

        The prompt is everything up to where the last assistant turn starts (earlier
        turns, and the template's assistant header in chat mode), rendered and tokenized
        exactly as in training but never truncated; the reference is that last turn's text.

        Args:
            split: ``train``, ``validation``, ``test`` or ``predict``.
        """
        part = self._split(split)
        if part is None:
            return []
        if part.format == "mix":
            raise ConfigError(
                f"data.mix: the {split} split mixes several sets, so it has no single file to cut prompts from. "
                "Use the validation split (data.val_file) for prompts."
            )
        if part.prompts is None:
            part.prompts = [self.prompt_example(row, part.format) for row in part.rows]
        return part.prompts

    def collator(self) -> SFTCollator:
        """What batches the examples of training (unpacked), validation and test: an :class:`SFTCollator`.

        Override with :meth:`encode_row` to batch columns a subclass adds.
        """
        return SFTCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def _split(self, split: Split) -> _Part | None:
        if split not in self._splits:
            self._load(split)
        return self._splits[split]

    def _load(self, split: Split) -> None:
        if self.resolve(split) != split:
            self._splits[split] = self._split("validation")
            return
        field, value, default_split = self.source(split)
        if field == "data.train_file":
            self._load_train_file()
        else:
            self._splits[split] = self._keep_supervised(split, self._read(field, value, default_split))

    def _load_train_file(self) -> None:
        """Prepare the train split, and the validation split when it is held out of the training file."""
        check_training_source(self.train_file, self.mix)
        if self.mix:
            self._load_mix()
            return
        part = self._read("data.train_file", self.train_file, "train")
        rows, held_out = self.holdout(len(part.rows))
        if held_out is not None:
            self._splits["validation"] = self._keep_supervised("validation", part, held_out)
        elif self.val_file is None:
            self._splits["validation"] = None
        self._splits["train"] = self._keep_supervised("train", part, rows)

    def _load_mix(self) -> None:
        """Prepare the train split from the sets of ``mix``, one after the other."""
        if self.val_file is None:
            self._splits["validation"] = None
        parts = [
            self._read(f"data.mix[{index}].path", source.path, "train", source.format, source.fields)
            for index, source in enumerate(self.mix)
        ]
        # One part for the whole mix; its "rows" name each example's set, in the
        # concatenated order MixSampler indexes into.
        origin = Dataset.from_dict({"set": np.repeat(np.arange(len(parts)), [len(p.rows) for p in parts])})
        examples = concatenate_datasets([part.examples for part in parts])
        train = self._keep_supervised("train", _Part(origin, examples, "mix", "data.mix"))
        self._mix_sizes = np.bincount(np.asarray(train.rows["set"]), minlength=len(parts)).tolist()
        check_mix_sizes(self._mix_sizes, self.mix, self.max_length)
        self._splits["train"] = train

    def _read(
        self,
        field: str,
        value: str,
        default_split: str,
        format: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> _Part:
        """Load a file, rename its columns, check its format and tokenize all its rows.

        ``format`` and ``fields`` default to the module's own (those of a mix's set
        are passed in).
        """
        self.load_tokenizer()
        source = f"{field} '{value}'"
        rows = rename_fields(load_split(value, field, default_split), self.fields if fields is None else fields, source)
        format = resolve_format(format or self.format, rows.column_names, source, self.format_columns)
        with one_thread_per_process():
            examples = rows.map(
                self.encoder().encode_row,
                with_indices=True,
                fn_kwargs={"format": format, "source": source, "path": value},
                remove_columns=rows.column_names,
                num_proc=self.num_proc,
                desc=f"Tokenizing {source}",
            )
        self.check_examples(examples, source, value)
        return _Part(rows, examples, format, source)

    def check_examples(self, examples: Dataset, source: str, path: str) -> None:
        """Inspect a file's encoded examples, all of its rows in file order, once they are tokenized.

        Here nothing; a subclass counts or warns about rows (``PreferenceDataModule``:
        pairs whose sides encode the same).

        Args:
            examples: What :meth:`encode_row` made of each row.
            source: The setting and file, as errors name them (``data.train_file 'x.jsonl'``).
            path: The file (or hub id), for :func:`~lit_lora.data.diagnose.row_location`.
        """

    def _keep_supervised(self, split: Split, part: _Part, rows: Sequence[int] | np.ndarray | None = None) -> _Part:
        """Select rows of a file, dropping (and counting, and warning about) those with nothing to train."""
        rows = np.arange(len(part.rows)) if rows is None else np.asarray(rows)
        self.stats[split] = split_stats(part.examples, rows)
        # Read through Arrow into one array: millions of rows never become Python ints.
        supervised = part.examples.with_format("arrow", columns=["num_supervised"])[:]["num_supervised"].to_numpy()
        kept = rows[supervised[rows] > 0]
        if len(rows) and not len(kept):
            # Training on nothing fails later and obscurely; validating on nothing reports nothing.
            raise ConfigError(
                f"{part.source}: no {split} example has a trained token within data.max_length={self.max_length} "
                f"(all {len(rows)} were cut before their response). Fix: raise data.max_length, or shorten the prompts."
            )
        self.dropped[split] = len(rows) - len(kept)
        if self.dropped[split]:
            rank_zero_warn(
                f"{split} split ({part.source}): dropped {self.dropped[split]} of {len(rows)} examples that have no "
                f"trained token within data.max_length={self.max_length}. Raise data.max_length, or shorten them."
            )
        return _Part(
            part.rows.select(kept),
            part.examples.select(kept).select_columns(list(self.example_columns)),
            part.format,
            part.source,
        )
