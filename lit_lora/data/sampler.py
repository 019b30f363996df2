"""The training order: a new shuffle every epoch, reproducible from seed and epoch, optionally grouped by length."""

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

    def generator(self) -> torch.Generator:
        """A generator for this epoch's order, seeded by ``seed + epoch``."""
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.num_examples, generator=self.generator()).tolist())

    def __len__(self) -> int:
        return self.num_examples


class LengthGroupedSampler(EpochShuffleSampler):
    """Shuffles like :class:`EpochShuffleSampler`, then batches examples of similar length together.

    The shuffled order is cut into mega-batches of ``mega_batches * batch_size``
    examples, each sorted longest first and cut into batches, so a batch holds
    examples of similar length and little padding. The full batches then run in a
    shuffled order, the one holding the longest example first (a batch too large
    for memory fails at the first step), and a short last batch last.

    Small mega-batches keep the speed of grouping and mix more lengths across the
    epoch's batches; a whole epoch sorted at once would be a curriculum from the
    longest examples to the shortest (measurements: ``docs/benchmarks.md``).

    Args:
        lengths: Token count of every example.
        batch_size: Examples per batch.
        seed: Base seed of the shuffle.
        mega_batches: Batches per mega-batch: larger groups lengths more tightly.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 4) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group = batch_size * mega_batches

    def __iter__(self) -> Iterator[int]:
        generator = self.generator()
        order = torch.randperm(self.num_examples, generator=generator).tolist()
        by_length = [
            index
            for start in range(0, len(order), self.group)
            for index in sorted(order[start : start + self.group], key=lambda i: -self.lengths[i])
        ]
        batches = [by_length[start : start + self.batch_size] for start in range(0, len(by_length), self.batch_size)]
        # A short last batch stays last: the loader cuts the order every batch_size indices.
        last = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]], default=None)
        first = [] if longest is None else [batches.pop(longest)]
        shuffled = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
        return iter([index for batch in first + shuffled + last for index in batch])
