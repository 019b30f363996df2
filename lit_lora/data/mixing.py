"""Several training sets in one run, each with its own format, field names and weight.

A typical use mixes a task set with general instruction data, so the model learns
the task without forgetting how to follow other instructions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from torch.utils.data import Sampler

from lit_lora.data.files import check_data_path
from lit_lora.data.formats import check_format_name
from lit_lora.errors import ConfigError


@dataclass(frozen=True)
class DataSource:
    """One training set of a mix.

    Args:
        path: A local ``.jsonl``/``.json``/``.csv``/``.parquet`` file, or a hub dataset
            id ``name`` or ``name:split``.
        format: Its layout (``prompt_completion``, ``alpaca``, ``messages``...), or
            ``auto`` to tell from the columns.
        fields: Column renames applied on reading, from the name the format expects to
            the name in this file, e.g. ``{prompt: question, completion: answer}``.
        weight: Relative share of the training examples drawn from this set; the
            shares of a mix are its weights divided by their sum.
    """

    path: str
    format: str = "auto"
    fields: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0


def check_training_source(train_file: str | None, mix: Sequence[DataSource] | None) -> None:
    """Refuse a training split with no source, or with both ``train_file`` and ``mix``.

    Raises:
        ConfigError: Naming both fields and the fix.
    """
    if (train_file is None) == (not mix):
        raise ConfigError(
            "data.train_file and data.mix: set exactly one of them (a single training file, "
            f"or a list of sets to mix); got train_file={train_file!r} and {len(mix or [])} mix sets."
        )


def check_training_sets(
    train_file: str | None,
    mix: Sequence[DataSource] | None,
    val_fraction: float,
    packing: bool,
    group_by_length: bool,
    format_columns: Mapping[str, Sequence[str]],
) -> None:
    """Refuse a data configuration with no training set, two kinds of it, or a mix it cannot serve.

    Raises:
        ConfigError: Naming the fields and the fix.
    """
    check_training_source(train_file, mix)
    if not mix:
        return
    for index, source in enumerate(mix):
        check_data_path(source.path, f"data.mix[{index}].path")
        check_format_name(source.format, format_columns, f"data.mix[{index}].format")
        weight = source.weight
        # NaN fails every comparison (so `weight <= 0` let it through), and infinity would take every draw.
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < math.inf:
            raise ConfigError(
                f"data.mix[{index}].weight: {weight!r} is not a finite number > 0. Fix: give each set a "
                "positive weight, such as 1.0 (weights are relative shares)."
            )
    for name, value in (("val_fraction", val_fraction > 0), ("packing", packing), ("group_by_length", group_by_length)):
        if value:
            raise ConfigError(
                f"data.{name} does not apply to data.mix yet. Fix: unset it (validate on data.val_file instead)."
            )


def rename_fields(rows: Dataset, fields: Mapping[str, str], source: str) -> Dataset:
    """Give the columns of ``rows`` the names the format expects.

    Args:
        rows: The file as read.
        fields: Expected name -> name in the file.
        source: The file, named in errors.

    Raises:
        ConfigError: A mapped column is not in the file, or the new name is taken by
            another column (which would be silently replaced).
    """
    if not fields:
        return rows
    columns = set(rows.column_names)
    for wanted, present in fields.items():
        if present not in columns:
            raise ConfigError(
                f"{source}: fields maps '{wanted}' to column '{present}', which the file does not have "
                f"(columns: {sorted(columns)}). Fix the name in fields."
            )
        if wanted in columns and wanted not in fields.values():
            raise ConfigError(
                f"{source}: fields maps '{wanted}' to column '{present}', but the file already has a "
                f"'{wanted}' column. Rename or drop one of them."
            )
    return rows.rename_columns({present: wanted for wanted, present in fields.items()})


class MixSampler(Sampler[int]):
    """Draws an epoch of indices into the concatenation of several sets, by weight.

    Each position of an epoch picks its set with probability proportional to the set's
    weight; within a set, examples are taken in a shuffled order without repeats, and
    a set asked for more examples than it has starts another shuffled round. The
    epoch is fixed by ``seed`` and :meth:`set_epoch`, so a resumed run draws the same.

    Args:
        sizes: Examples in each set, in concatenation order.
        weights: Relative weight of each set.
        seed: Base seed of the draws.
        num_samples: Examples per epoch; unset uses the sum of ``sizes``.
    """

    def __init__(
        self, sizes: Sequence[int], weights: Sequence[float], seed: int, num_samples: int | None = None
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("MixSampler needs one weight per set, and at least one set.")
        if any(w <= 0 for w in weights) or any(s <= 0 for s in sizes):
            raise ValueError(f"MixSampler needs positive sizes and weights, got {list(sizes)} and {list(weights)}.")
        self.sizes = list(sizes)
        self.weights = torch.tensor(list(weights), dtype=torch.float64)
        self.seed = seed
        self.num_samples = num_samples or sum(self.sizes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        choice = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        offsets = [0]
        for size in self.sizes[:-1]:
            offsets.append(offsets[-1] + size)
        picks: list[torch.Tensor] = []
        for index, size in enumerate(self.sizes):
            wanted = int((choice == index).sum())
            rounds = -(-wanted // size)  # ceil: whole shuffled passes over the set
            order = (
                torch.cat([torch.randperm(size, generator=generator) for _ in range(rounds)])
                if rounds
                else torch.empty(0, dtype=torch.long)
            )
            picks.append(order[:wanted] + offsets[index])
        # Put each set's picks where the draw placed that set: position order is random.
        indices = torch.empty(self.num_samples, dtype=torch.long)
        for index, chosen in enumerate(picks):
            indices[choice == index] = chosen
        return iter(indices.tolist())

    def __len__(self) -> int:
        return self.num_samples


def check_mix_sizes(sizes: Sequence[int], mix: Sequence[DataSource], max_length: int) -> None:
    """Refuse a mix in which a set keeps no example.

    Args:
        sizes: Kept training examples of each set, in ``mix`` order.
        mix: The sets, as configured.
        max_length: ``data.max_length``, named in the error.

    Raises:
        ConfigError: A set has no example with a trained token within ``max_length``.
    """
    for index, size in enumerate(sizes):
        if size == 0:
            raise ConfigError(
                f"data.mix[{index}].path '{mix[index].path}': no example has a trained token within "
                f"data.max_length={max_length}. Fix: raise data.max_length, or remove the set from the mix."
            )
