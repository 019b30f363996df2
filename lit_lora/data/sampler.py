"""The training order: a new shuffle every epoch, reproducible from the seed and the epoch."""

from __future__ import annotations

from collections.abc import Iterator

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
