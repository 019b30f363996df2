"""The base of every data module: splits and the files serving them, the tokenizer, seeded loaders.

A task's data module (:class:`~lit_lora.data.SFTDataModule`,
:class:`~lit_lora.data.ClassificationDataModule`, ...) subclasses :class:`TaskDataModule`
and implements :meth:`TaskDataModule.dataset` and :meth:`TaskDataModule.collator`; the
other hooks have defaults. :class:`DataModuleContract` names what memory planning and
the tasks read from any data module.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.tokenizer import load_data_tokenizer
from lit_lora.data.cache import LIT_LORA_VERSION
from lit_lora.data.files import check_split_files
from lit_lora.data.resumable import ResumableBatchSampler, ResumableDataLoader
from lit_lora.data.sampler import EpochShuffleSampler
from lit_lora.data.sharding import ShardedCollator, ShardedDataset, eval_share
from lit_lora.data.split import holdout_split
from lit_lora.errors import ConfigError

Split = Literal["train", "validation", "test", "predict"]

# What each Lightning stage reads; None (a direct call) prepares everything.
STAGE_SPLITS: dict[str | None, tuple[Split, ...]] = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": ("predict",),
    None: ("train", "validation", "test", "predict"),
}


@runtime_checkable
class DataModuleContract(Protocol):
    """What memory planning (``lit_lora.training.planning``, ``lit-lora estimate``) reads from a data module.

    Attributes:
        batch_size: Examples per training batch, or ``auto`` until planning resolves it.
        effective_batch_size: Examples per optimizer step that ``auto`` aims for.
        max_length: Longest example in tokens.
        sequences_per_example: Sequences each example puts in a batch (2 for preference pairs).
    """

    batch_size: int | Literal["auto"]
    effective_batch_size: int
    max_length: int
    sequences_per_example: int

    def longest_batch_length(self) -> int:
        """Tokens per sequence of the longest batch the prepared splits can make."""


def check_at_least(**settings: tuple[int | float | None, int]) -> None:
    """Refuse a ``data.`` setting below its smallest value; ``None`` (unset) passes.

    Args:
        settings: Each setting's name and ``(value, smallest)``.

    Raises:
        ConfigError: Naming the first setting below its smallest value.
    """
    for field, (value, smallest) in settings.items():
        if value is not None and value < smallest:
            raise ConfigError(f"data.{field}: {value} is below {smallest}. Fix: set it to at least {smallest}.")


class TaskDataModule(LightningDataModule):
    """Splits, tokenizer and loaders shared by every task's data module.

    Which file serves a split: ``train_file`` the training data; ``val_file`` the
    validation data, else a ``val_fraction`` of the training rows held out (fixed by
    ``seed``); ``test_file`` and ``predict_file`` their splits, else the validation data.

    A subclass takes these settings through ``**kwargs`` (the CLI follows them here,
    and ``--help`` prints these docs), declaring only those whose default or meaning
    differs. It sets ``encoding_settings`` to the constructor settings that change how
    a row is encoded (they, and nothing else of the module, key the tokenization cache)
    and ``loader_settings`` to the others; every constructor argument is in exactly one.

    Args:
        train_file: Training data: a local ``.jsonl``/``.json``/``.csv``/``.parquet``
            file, or a hub dataset id ``name`` or ``name:split`` (default split ``train``).
        val_file: Validation data, like ``train_file`` (default split ``validation``).
            Leave unset to hold out ``val_fraction`` of the training data instead, or to
            skip validation.
        val_fraction: Share of the training rows held out for validation when there is
            no ``val_file``, in [0, 1); the split is fixed by ``seed``. 0 means no validation.
        test_file: Data for ``lit-lora test`` (default hub split ``test``); unset uses
            the validation data.
        predict_file: Data for ``lit-lora predict`` (default hub split ``test``); unset
            uses the validation data.
        max_length: Longest example in tokens.
        batch_size: Examples per training batch, or ``auto``: the largest power of two
            up to ``effective_batch_size`` whose estimated memory at ``max_length`` fits
            the device once the model is loaded, with the trainer's gradient
            accumulation set to reach ``effective_batch_size`` (see
            ``lit_lora.training.planning``); both are printed.
        effective_batch_size: With ``batch_size: auto``, the examples per optimizer
            step (micro-batch x gradient accumulation, rounded up); otherwise unused.
        eval_batch_size: Examples per validation, test and predict batch; unset uses
            ``batch_size``.
        num_workers: DataLoader worker processes; 0 loads batches in the main process.
        seed: Seeds the training shuffle, the loaders' workers and the ``val_fraction`` split.
        tokenizer_name_or_path: Folder or hub id of the tokenizer. The CLI fills it in
            from ``model.model_name_or_path``; set it only to use the data module alone.
        gguf_file: GGUF file inside ``tokenizer_name_or_path`` whose tokenizer to use.
            The CLI fills it in from ``model.gguf_file``.
    """

    # Sequences each example puts in a batch, which the memory estimate counts.
    sequences_per_example: ClassVar[int] = 1
    encoding_settings: ClassVar[tuple[str, ...]] = ("max_length", "tokenizer_name_or_path", "gguf_file")
    loader_settings: ClassVar[tuple[str, ...]] = (
        "train_file",
        "val_file",
        "val_fraction",
        "test_file",
        "predict_file",
        "batch_size",
        "effective_batch_size",
        "eval_batch_size",
        "num_workers",
        "seed",
    )

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        val_fraction: float = 0.0,
        test_file: str | None = None,
        predict_file: str | None = None,
        max_length: int = 2048,
        batch_size: int | Literal["auto"] = 4,
        effective_batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        tokenizer_name_or_path: str | None = None,
        gguf_file: str | None = None,
    ) -> None:
        super().__init__()
        check_split_files(train_file, val_file, val_fraction, test_file, predict_file)
        check_at_least(
            max_length=(max_length, 1),
            batch_size=(None if batch_size == "auto" else batch_size, 1),
            effective_batch_size=(effective_batch_size, 1),
            eval_batch_size=(eval_batch_size, 1),
            num_workers=(num_workers, 0),
        )
        self.train_file = train_file
        self.val_file = val_file
        self.val_fraction = val_fraction
        self.test_file = test_file
        self.predict_file = predict_file
        self.max_length = max_length
        # "auto" until lit_lora.training.planning resolves it, once the model is loaded.
        self.batch_size = batch_size
        self.effective_batch_size = effective_batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.gguf_file = gguf_file
        self.tokenizer: PreTrainedTokenizerBase | None = None

    # ------------------------------------------------------------------ hooks a task implements
    def dataset(self, split: Split) -> Sized | None:
        """The encoded examples of a split, prepared on first use; ``None`` when the split has no data.

        Args:
            split: ``train``, ``validation``, ``test`` or ``predict``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement dataset(split)")

    def collator(self) -> Callable[[list[Any]], dict[str, Any]]:
        """What batches the examples of training, validation, test and predict."""
        raise NotImplementedError(f"{type(self).__name__} must implement collator()")

    def longest_examples(self) -> list[int]:
        """The token length of the longest example of each prepared split; ``[]`` when none is."""
        return []

    # ------------------------------------------------------------------ splits and files
    def resolve(self, split: Split) -> Split:
        """The split whose data ``split`` uses: the validation data for a missing test or predict file.

        Args:
            split: ``train``, ``validation``, ``test`` or ``predict``.
        """
        if (split == "test" and self.test_file is None) or (split == "predict" and self.predict_file is None):
            return "validation"
        return split

    def source(self, split: Split) -> tuple[str, str | None, str]:
        """The setting, file and default hub split that a split's rows come from.

        The validation rows come from ``train_file`` when there is no ``val_file``
        (see :meth:`holdout`); test and predict, use :meth:`resolve` first.

        Args:
            split: ``train``, ``validation``, ``test`` or ``predict``.
        """
        if split == "validation" and self.val_file is not None:
            return "data.val_file", self.val_file, "validation"
        if split in ("train", "validation"):
            return "data.train_file", self.train_file, "train"
        if split == "test":
            return "data.test_file", self.test_file, "test"
        return "data.predict_file", self.predict_file, "test"

    def has_data(self, split: Split) -> bool:
        """Whether a split is served by a file: a validation split needs ``val_file`` or ``val_fraction``.

        Args:
            split: ``train``, ``validation``, ``test`` or ``predict``.
        """
        split = self.resolve(split)
        if split == "validation":
            return self.val_file is not None or self.val_fraction > 0
        return self.source(split)[1] is not None

    def holdout(self, num_rows: int) -> tuple[np.ndarray | range, np.ndarray | None]:
        """The training and held-out validation rows of ``train_file``; no held-out rows without ``val_fraction``.

        Args:
            num_rows: How many rows ``train_file`` has.
        """
        if self.val_fraction > 0:
            return holdout_split(num_rows, self.val_fraction, self.seed)
        return range(num_rows), None

    def load_tokenizer(self) -> None:
        """Load the tokenizer, once; a subclass checks it or derives settings from it after ``super()``."""
        if self.tokenizer is None:
            self.tokenizer = load_data_tokenizer(self.tokenizer_name_or_path, self.gguf_file)

    def encoder(self) -> TaskDataModule:
        """A bare copy for ``Dataset.map``: the tokenizer, the ``encoding_settings``, ``encoding_state`` and version.

        ``Dataset.map`` pickles its function to worker processes and hashes it into the
        cache key, so the copy carries nothing else: no trainer (it cannot be pickled),
        no loaded data (which would change the key from one call to the next), no
        loader settings (a new batch size must not tokenize everything again). It
        carries lit_lora's version, as the hash names lit_lora's code but does not read
        it: after an upgrade, which may encode differently, everything is tokenized anew.
        The rows it encodes key the cache by their content (``lit_lora.data.cache``).
        """
        clone = object.__new__(type(self))
        names = ("tokenizer", *self.encoding_settings, *self.encoding_state)
        clone.__dict__.update({name: getattr(self, name) for name in names}, lit_lora_version=LIT_LORA_VERSION)
        return clone

    # What a subclass derives from the tokenizer and its encoding settings, for encoder().
    encoding_state: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer, then read and encode the data the stage needs.

        Safe to call again: splits already prepared are kept.

        Args:
            stage: ``fit``, ``validate``, ``test``, ``predict``, or ``None`` for all.
        """
        for split in STAGE_SPLITS[stage]:
            self.dataset(split)

    def train_dataset(self) -> Dataset:
        """What the training loader indexes: the training examples."""
        return self.dataset("train")

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """The order of the training examples: a fresh shuffle each epoch, fixed by ``seed``.

        Args:
            dataset: What :meth:`train_dataset` returned.
        """
        return EpochShuffleSampler(len(dataset), self.seed)

    def train_collator(self) -> Callable[[list[Any]], dict[str, Any]]:
        """What batches the training examples: :meth:`collator`."""
        return self.collator()

    def devices(self) -> tuple[int, int]:
        """``(devices sharing the data, this device's rank)``: ``(1, 0)`` outside a multi-device run.

        Raises:
            ConfigError: Several devices with ``trainer.use_distributed_sampler`` on, which
                would replace the training order with Lightning's.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return 1, 0
        # Lightning keeps this setting on its accelerator connector only.
        if trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError(
                "trainer.use_distributed_sampler: true replaces lit_lora's training order (shuffle, length "
                "grouping, mix weights, packs) on several devices; lit_lora shards its loaders itself. "
                "Fix: set trainer.use_distributed_sampler: false (the lit_lora CLI's default)."
            )
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        """Training batches in :meth:`train_sampler` order, this device's share of them, resumable mid-epoch."""
        dataset, collate = self.train_dataset(), self.train_collator()
        num_devices, rank = self.devices()
        batch_sampler = ResumableBatchSampler(self.train_sampler(dataset), self.batch_size, False, num_devices, rank)
        if num_devices > 1:
            # A device short of a batch at the epoch's end runs a marked filler (lit_lora.data.sharding).
            dataset, collate = ShardedDataset(dataset), ShardedCollator(collate)
        return ResumableDataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            generator=self._generator(),
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches, or ``[]`` (no validation) when there is no validation data."""
        return self.eval_loader(self.dataset("validation"), self.collator())

    def test_dataloader(self) -> DataLoader | list:
        """Test batches from ``test_file``, else the validation data; ``[]`` when there is none."""
        return self.eval_loader(self.dataset("test"), self.collator())

    def predict_dataloader(self) -> DataLoader | list:
        """Predict batches from ``predict_file``, else the validation data; ``[]`` when there is none."""
        return self.eval_loader(self.dataset("predict"), self.collator())

    def eval_loader(self, examples: Any, collate: Callable[[list[Any]], dict[str, Any]]) -> DataLoader | list:
        """Batches of ``eval_batch_size`` examples in order (this device's share), or ``[]`` when there are none.

        Args:
            examples: The examples, or ``None``.
            collate: What batches them.
        """
        if not examples:
            return []
        return DataLoader(
            eval_share(examples, *self.devices()),
            batch_size=self.eval_batch_size,
            collate_fn=collate,
            num_workers=self.num_workers,
            generator=self._generator(),
        )

    def longest_batch_length(self) -> int:
        """Tokens per sequence of the longest batch the prepared splits can make.

        Batches are padded to their longest example: its length, at most
        ``max_length``; ``max_length`` when no split is prepared yet.
        """
        return min(self.max_length, max(self.longest_examples(), default=self.max_length))

    def _generator(self) -> torch.Generator:
        # Every DataLoader iterator draws its workers' base seed from this generator, or
        # from the global RNG when there is none: a validation pass would then shift the
        # dropout masks of all later training steps, and a resumed run (which skips the
        # validation the interrupted run did) could not reproduce them.
        return torch.Generator().manual_seed(self.seed)
