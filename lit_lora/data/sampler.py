"""The training order: a new shuffle every epoch, reproducible from the seed and the epoch, optionally grouped by length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``num_examples`` indices with a generator seeded by ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before every epoch, including the first epoch
    after resuming from a checkpoint, so a resumed run sees the order the
    uninterrupted run would have seen; a generator created once and re-seeded per
    dataloader would replay epoch 0's order after every resume.

    Args:
        num_examples: Size of the dataset.
        seed: Base seed of the shuffle.
    """

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


class LengthGroupedSampler(EpochShuffleSampler):
    """Shuffles like :class:`EpochShuffleSampler`, then groups examples of similar length.

    The shuffled order is cut into mega-batches of ``mega_batches * batch_size``
    examples, each sorted longest first, so consecutive batches of ``batch_size``
    hold examples of similar length and little padding, while the mix of examples
    still changes every epoch.

    Args:
        lengths: Token count of every example.
        batch_size: Examples per batch.
        seed: Base seed of the shuffle.
        mega_batches: Batches per mega-batch: larger groups lengths more tightly and
            shuffles less.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 50) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.group = batch_size * mega_batches

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        groups = (order[start : start + self.group] for start in range(0, len(order), self.group))
        return iter([index for group in groups for index in sorted(group, key=lambda i: -self.lengths[i])])
