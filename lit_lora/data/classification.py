"""The data module for sequence classification: a text column and a label column."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_info

from lit_lora.data.base import Split, TaskDataModule
from lit_lora.data.diagnose import row_location
from lit_lora.data.files import load_split
from lit_lora.errors import ConfigError


def label_name(value: Any) -> str:
    """A label as the mapping names it: the text of the value (``1`` and ``"1"`` are one label)."""
    return str(value).strip()


def missing_label(value: Any) -> bool:
    """Whether a label value names no class: null, NaN, or empty (or blank) text."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or not label_name(value)


def sorted_labels(values: Sequence[Any]) -> list[str]:
    """Distinct label names, numbers in numeric order (``2`` before ``10``), then text in alphabetical order."""
    names = {label_name(value) for value in values}
    return sorted(names, key=lambda name: (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name))


class ClassificationCollator:
    """Right-pads ``input_ids`` into ``(B, T)`` with an ``attention_mask``; ``labels`` is ``(B,)``.

    Args:
        pad_token_id: Id written into the padding.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
            attention_mask[index, : len(row["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        batch["index"] = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        return batch


class ClassificationDataModule(TaskDataModule):
    """Labelled texts for sequence classification, from CSV, JSON Lines, JSON or Parquet files.

    Each row has a text and a label. Label names map to class ids in the order of
    ``labels``; the module trains on the ids and ``predict`` writes the names back.
    The mapping is saved with the adapter (``labels.json``), so a trained adapter
    always reads its classes the way it was trained.

    The settings of every task's data module (``val_file``, ``val_fraction``,
    ``test_file``, ``effective_batch_size``, ``eval_batch_size``, ``num_workers``,
    ``seed``, the tokenizer) are :class:`~lit_lora.data.base.TaskDataModule`'s, counted
    in rows.

    Args:
        train_file: Training rows: a local file, or a hub dataset id ``name`` or ``name:split``.
        predict_file: Texts to classify in ``predict``; a label column is optional and,
            when present, is written next to each prediction as the reference. Unset
            uses the validation rows.
        text_field: Column holding the text.
        label_field: Column holding the label (text or integer). A row of ``train_file``,
            ``val_file`` or ``test_file`` whose label is null, NaN or empty is an error
            naming its file and line.
        labels: Label names in class-id order. Unset: the distinct labels of
            ``train_file``, numbers in numeric order, then names in alphabetical order.
            A row whose label is not among them is an error naming its file and line.
        class_weights: Loss weight of each class, in ``labels`` order, or ``balanced``
            (``rows / (classes x rows of the class)`` over the training rows, as
            scikit-learn computes it) for imbalanced data; unset weighs all alike.
        max_length: Longest text in tokens; longer texts keep their first ``max_length``.
        batch_size: Rows per training batch, or ``auto`` (see ``lit_lora.training.planning``).
        **kwargs: The settings of :class:`~lit_lora.data.base.TaskDataModule`.
    """

    encoding_settings: ClassVar[tuple[str, ...]] = (
        *TaskDataModule.encoding_settings,
        "text_field",
        "label_field",
        "labels",
    )
    loader_settings: ClassVar[tuple[str, ...]] = (*TaskDataModule.loader_settings, "class_weights")

    def __init__(
        self,
        train_file: str | None = None,
        *,
        predict_file: str | None = None,
        text_field: str = "text",
        label_field: str = "label",
        labels: list[str] | None = None,
        class_weights: list[float] | Literal["balanced"] | None = None,
        max_length: int = 512,
        batch_size: int | Literal["auto"] = 16,
        **kwargs: Any,
    ) -> None:
        base = {"train_file": train_file, "predict_file": predict_file, "max_length": max_length}
        super().__init__(batch_size=batch_size, **base, **kwargs)
        if labels is not None and len(set(map(label_name, labels))) != len(labels):
            raise ConfigError(f"data.labels: {labels} names a label twice. Fix: list each label once.")
        if labels is not None and len(labels) < 2:
            raise ConfigError(f"data.labels: {labels} has fewer than 2 classes. Fix: list every class.")
        if isinstance(class_weights, list) and any(weight <= 0 for weight in class_weights):
            raise ConfigError(f"data.class_weights: {class_weights} must all be > 0.")
        self.text_field = text_field
        self.label_field = label_field
        self.labels = None if labels is None else [label_name(label) for label in labels]
        self.class_weights = class_weights
        self._splits: dict[str, Dataset | None] = {}
        self._texts: dict[str, tuple[list[str], list[str | None]]] = {}

    # ------------------------------------------------------------------ the label mapping
    def label_names(self) -> list[str]:
        """The label names in class-id order, read from ``train_file`` when ``labels`` is unset."""
        if self.labels is None:
            if self.train_file is None:
                raise ConfigError(
                    "data.labels is not set and there is no data.train_file to read them from. "
                    "Fix: set data.labels to the class names in the order the adapter was trained with."
                )
            values = self._rows("data.train_file", self.train_file, "train", need_labels=True)[self.label_field]
            for position, value in enumerate(values):
                if missing_label(value):
                    raise self._missing_label("data.train_file", self.train_file, position, value)
            self.labels = sorted_labels(values)
            if len(self.labels) < 2:
                raise ConfigError(
                    f"data.train_file '{self.train_file}': column '{self.label_field}' holds a single label "
                    f"{self.labels}. Fix: a classifier needs at least 2 classes in its training data."
                )
        return self.labels

    def loss_weights(self) -> torch.Tensor | None:
        """Per-class loss weights in class-id order, or ``None`` for equal weights."""
        if self.class_weights is None:
            return None
        names = self.label_names()
        if self.class_weights == "balanced":
            counts = np.bincount(np.asarray(self.dataset("train")["label"]), minlength=len(names))
            if (counts == 0).any():
                missing = [name for name, count in zip(names, counts) if count == 0]
                raise ConfigError(
                    f"data.class_weights: balanced, but the training rows hold no example of {missing}. "
                    "Fix: add examples of every class, or give the weights as a list."
                )
            return torch.tensor(counts.sum() / (len(names) * counts), dtype=torch.float32)
        if len(self.class_weights) != len(names):
            raise ConfigError(
                f"data.class_weights: {len(self.class_weights)} weights for {len(names)} labels {names}. "
                "Fix: give one weight per label, in that order."
            )
        return torch.tensor(self.class_weights, dtype=torch.float32)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer, the label mapping, and the splits the stage needs."""
        if stage != "predict":
            names = self.label_names()
            rank_zero_info(f"lit_lora: {len(names)} labels: {', '.join(f'{i}={n}' for i, n in enumerate(names))}")
        super().setup(stage)

    def collator(self) -> ClassificationCollator:
        """Right-pads texts into batches with their class ids: a :class:`ClassificationCollator`."""
        return ClassificationCollator(self.tokenizer.pad_token_id)

    def longest_examples(self) -> list[int]:
        """The token length of the longest text of each prepared split."""
        return [max(map(len, split["input_ids"])) for split in self._splits.values() if split]

    def texts(self, split: Split) -> list[str]:
        """The texts of a split, in row order (``index`` of a batch points into them)."""
        return self._texts_and_references(self.resolve(split))[0]

    def references(self, split: Split) -> list[str | None]:
        """The label names of a split's rows, or ``None`` where a predict file has no labels."""
        return self._texts_and_references(self.resolve(split))[1]

    def _texts_and_references(self, split: Split) -> tuple[list[str], list[str | None]]:
        if split not in self._texts:
            rows, _ = self._source_rows(split)
            texts = list(rows[self.text_field])
            if self.label_field in rows.column_names:
                labels = rows[self.label_field]
                self._texts[split] = (texts, [None if missing_label(v) else label_name(v) for v in labels])
            else:
                self._texts[split] = (texts, [None] * len(texts))
        return self._texts[split]

    # ------------------------------------------------------------------ reading
    def dataset(self, split: Split) -> Dataset | None:
        """The tokenized rows of a split (``input_ids``, ``label``, ``index``), or ``None`` when it has none."""
        split = self.resolve(split)
        if split not in self._splits:
            self._load(split)
        return self._splits[split]

    def _source_rows(self, split: Split) -> tuple[Dataset, Sequence[int]]:
        """A split's rows, and their 0-based positions in the file they come from, for errors."""
        split = self.resolve(split)
        field, value, default_split = self.source(split)
        rows = self._rows(field, value, default_split, need_labels=split != "predict")
        if field != "data.train_file":
            return rows, range(len(rows))
        train, held_out = self.holdout(len(rows))
        positions = held_out if split == "validation" else train
        return rows.select(positions), positions

    def _rows(self, field: str, value: str, default_split: str, need_labels: bool) -> Dataset:
        rows = load_split(value, field, default_split)
        required = [self.text_field] + ([self.label_field] if need_labels else [])
        missing = [column for column in required if column not in rows.column_names]
        if missing:
            raise ConfigError(
                f"{field} '{value}': no column {missing} (columns: {rows.column_names}). "
                "Fix: set data.text_field / data.label_field to the columns holding the text and the label."
            )
        return rows

    def _load(self, split: Split) -> None:
        if not self.has_data(split):
            self._splits[split] = None
            return
        self.load_tokenizer()
        field, value, _ = self.source(split)
        rows, positions = self._source_rows(split)
        # Predicting needs no labels: a predict file's label column is only read as the reference.
        has_labels = split != "predict"
        names = self.label_names() if has_labels else []
        ids = {name: index for index, name in enumerate(names)}
        labels = []
        for position, row in zip(map(int, positions), rows, strict=True):
            text = row[self.text_field]
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(
                    f"{field} '{value}', {row_location(value, position)}: '{self.text_field}' is empty or not text."
                )
            if not has_labels:
                labels.append(-1)
                continue
            if missing_label(row[self.label_field]):
                raise self._missing_label(field, value, position, row[self.label_field])
            name = label_name(row[self.label_field])
            if name not in ids:
                raise ConfigError(
                    f"{field} '{value}', {row_location(value, position)}: label '{name}' is not one of {names}. "
                    "Fix: correct the row, or add the label to data.labels (which then must list every class)."
                )
            labels.append(ids[name])
        encoded = self.tokenizer(list(rows[self.text_field]), truncation=True, max_length=self.max_length)
        self._splits[split] = Dataset.from_dict(
            {"input_ids": encoded["input_ids"], "label": labels, "index": list(range(len(rows)))}
        )

    def _missing_label(self, field: str, path: str, position: int, value: Any) -> ConfigError:
        """The error for a row whose label names no class (see :func:`missing_label`)."""
        shown = "null" if value is None else "NaN" if isinstance(value, float) else repr(value)
        return ConfigError(
            f"{field} '{path}', {row_location(path, position)}: '{self.label_field}' is {shown}, which names no "
            "class. Fix: write the row's label, or drop the row (texts to classify without labels go in "
            "data.predict_file)."
        )
