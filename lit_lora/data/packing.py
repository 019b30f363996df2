"""Packing several training examples into each sequence, so that no compute goes to padding.

Examples are packed whole (never split) by best-fit decreasing into bins of
``max_length`` tokens. Inside a packed row each example keeps its own positions
(``position_ids`` restart at 0), and transformers turns such ``position_ids`` into a
block-diagonal causal mask when the row has no ``attention_mask``, for eager and
sdpa (flash attention only in its padding-free mode, one row per batch, which the
module enforces): no example attends to another, and every example is computed
exactly as it would be alone. The first token of each example is never the
training target of the previous example's last token.

With ``split=True`` (see :func:`split_packs`), examples are instead laid end to end in
the shuffled order and cut at pack boundaries, so every pack but an epoch's last holds
exactly ``max_length`` tokens. The piece of a cut example that goes on in the next pack
(its continuation, always at the start of that pack) is treated as an example of its
own: its positions restart at 0, it cannot attend to its first part (another row), and
its first label is masked, since that token's predictor, the first part's last token,
is at the end of another row. That one target per cut is lost to the loss; all other
labels are kept. Positions restart rather than go on from where the first part stopped
because flash attention's padding-free path reads the sequence starts from the
``position_ids`` equal to their minimum (0) and would leave a row-leading continuation
at position p>0 out of every sequence (sdpa and eager would cope: they split a row
wherever the positions do not step by 1, which a row's first segment never needs).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

import torch
from datasets import Dataset

from lit_lora.data.collate import padded_length
from lit_lora.data.encode import IGNORE_INDEX, Example
from lit_lora.data.sampler import EpochShuffleSampler
from lit_lora.errors import ConfigError


def best_fit_decreasing(lengths: Sequence[int], order: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack examples into as few bins of ``capacity`` tokens as best-fit decreasing finds.

    The longest example goes first, each into the fullest bin it still fits in, or a
    new bin. Sorting is stable, so ``order`` breaks ties between equal lengths: the
    packs depend on ``order`` only through which equal-length examples trade places,
    and their number not at all.

    Args:
        lengths: Token count of every example.
        order: The example indices to pack, in tie-breaking order.
        capacity: Most tokens per bin; no example may be longer.

    Returns:
        The bins, each a list of example indices, in the order the bins were opened.

    Raises:
        ValueError: An example is longer than ``capacity``.
    """
    bins: list[list[int]] = []
    # Free space of the open bins: the distinct values sorted, and the bins having each.
    spaces: list[int] = []
    bins_by_space: dict[int, list[int]] = {}
    for index in sorted(order, key=lambda i: -lengths[i]):
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"Example {index} has {length} tokens, more than the {capacity} a pack holds.")
        slot = bisect.bisect_left(spaces, length)
        if slot == len(spaces):
            target, space = len(bins), capacity
            bins.append([])
        else:
            space = spaces[slot]
            waiting = bins_by_space[space]
            # The earliest opened of the tightest bins, so the packs are reproducible.
            target = waiting.pop(0)
            if not waiting:
                del bins_by_space[space], spaces[slot]
        bins[target].append(index)
        space -= length
        if space > 0:
            if space not in bins_by_space:
                bisect.insort(spaces, space)
                bins_by_space[space] = []
            bisect.insort(bins_by_space[space], target)
    return bins


# A whole example, by index, or the tokens [start, stop) of one: (index, start, stop).
PackItem = int | tuple[int, int, int]


def split_packs(lengths: Sequence[int], order: Sequence[int], capacity: int) -> list[list[PackItem]]:
    """Lay the examples end to end in ``order`` and cut the stream into packs of ``capacity`` tokens.

    Every pack but the last holds exactly ``capacity`` tokens; an example that crosses a
    pack boundary is cut there (into more than two pieces if it is longer than a pack).

    Args:
        lengths: Token count of every example.
        order: The example indices to pack, in order.
        capacity: Tokens per pack.

    Returns:
        The packs in order, ``ceil(sum(lengths) / capacity)`` of them. Each item is an
        example index where the pack holds the whole example, else the piece
        ``(index, start, stop)`` of its tokens that the pack holds.
    """
    packs: list[list[PackItem]] = []
    pack: list[PackItem] = []
    free = capacity
    for index in order:
        length, start = lengths[index], 0
        while start < length:
            stop = min(length, start + free)
            pack.append(index if stop - start == length else (index, start, stop))
            free -= stop - start
            start = stop
            if free == 0:
                packs.append(pack)
                pack, free = [], capacity
    if pack:
        packs.append(pack)
    return packs


class PackingSampler(EpochShuffleSampler):
    """Yields packs (lists of example indices), newly packed and shuffled every epoch.

    Each epoch shuffles the examples with a generator seeded by ``seed + epoch``,
    packs them by :func:`best_fit_decreasing` (the shuffle decides which of the
    equal-length examples share a pack), then shuffles the packs. Every example is in
    exactly one pack per epoch, and the number of packs is the same every epoch, so
    ``len`` is exact for Lightning's schedule and progress.

    With ``split``, the shuffled examples are cut into packs by :func:`split_packs`
    instead, kept in that order: every token is in exactly one pack per epoch, and
    there are ``ceil(total tokens / max_length)`` packs every epoch.

    Args:
        lengths: Token count of every example.
        max_length: Most tokens per pack.
        seed: Base seed of the shuffles.
        split: Fill every pack but the last to exactly ``max_length`` tokens, cutting
            examples at the pack boundaries.
    """

    def __init__(self, lengths: Sequence[int], max_length: int, seed: int, split: bool = False) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.max_length = max_length
        self.split = split
        if split:
            self._num_packs = math.ceil(sum(self.lengths) / max_length)
        else:
            # The count is independent of the shuffle, so packing once in index order gives it.
            self._num_packs = len(best_fit_decreasing(self.lengths, range(len(self.lengths)), max_length))

    def __iter__(self) -> Iterator[list[PackItem]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_examples, generator=generator).tolist()
        if self.split:
            return iter(split_packs(self.lengths, order, self.max_length))
        packs = best_fit_decreasing(self.lengths, order, self.max_length)
        return iter([packs[i] for i in torch.randperm(len(packs), generator=generator).tolist()])

    def __len__(self) -> int:
        return self._num_packs


class PackedDataset(torch.utils.data.Dataset):
    """Reads a pack of examples at once: indexed by a list of items, as a :class:`PackingSampler` yields.

    An item is an example index, or ``(index, start, stop)`` for the piece of an
    example's tokens in ``[start, stop)``, read as an example of its own (its
    ``num_supervised`` counts the piece's trained labels after its first token).

    Args:
        examples: The tokenized examples.
    """

    def __init__(self, examples: Dataset) -> None:
        self.examples = examples

    def __getitem__(self, pack: list[PackItem]) -> list[Example]:
        return [self._read(item) for item in pack]

    def _read(self, item: PackItem) -> Example:
        if isinstance(item, int):
            return self.examples[item]
        index, start, stop = item
        example = self.examples[index]
        labels = example["labels"][start:stop]
        return {
            "input_ids": example["input_ids"][start:stop],
            "labels": labels,
            "num_supervised": sum(label != IGNORE_INDEX for label in labels[1:]),
            "truncated": example.get("truncated", False),
        }

    def __len__(self) -> int:
        return len(self.examples)


class PackedCollator:
    """Concatenates each pack into one row, and right-pads the rows to the longest.

    Args:
        pad_token_id: The id written into ``input_ids`` at padded positions.
        pad_to_multiple_of: Round the padded length T up to a multiple of this;
            ``None`` pads to the longest row only.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, packs: Sequence[Sequence[Example]]) -> dict[str, torch.Tensor]:
        """Batch packs of examples holding ``input_ids`` and ``labels`` into (B, T) LongTensors.

        Args:
            packs: One list of tokenized examples per row.

        Returns:
            ``input_ids``, ``labels`` and ``position_ids``, and no ``attention_mask``:
            the restarts of ``position_ids`` separate the examples. Each example's
            positions count from 0, and so does the padding's, which thus forms a
            sequence of its own whose labels are all -100. Each example's first label
            is -100, since the loss would read it as the target of the previous
            example's last token. A piece of a cut example is one example here: its
            positions restart at 0 and its first label is -100 too.
        """
        sizes = [sum(len(example["input_ids"]) for example in pack) for pack in packs]
        length = padded_length(sizes, self.pad_to_multiple_of)
        input_ids = torch.full((len(packs), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(packs), length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(packs), length), dtype=torch.long)
        for row, pack in enumerate(packs):
            start = 0
            for example in pack:
                end = start + len(example["input_ids"])
                input_ids[row, start:end] = torch.tensor(example["input_ids"], dtype=torch.long)
                labels[row, start + 1 : end] = torch.tensor(example["labels"][1:], dtype=torch.long)
                position_ids[row, start:end] = torch.arange(end - start)
                start = end
            position_ids[row, start:] = torch.arange(length - start)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def check_packing_settings(packing: bool, packing_split: bool, group_by_length: bool) -> None:
    """Refuse packing settings that contradict each other.

    Raises:
        ConfigError: ``packing`` with ``group_by_length``, or ``packing_split`` without ``packing``.
    """
    if packing and group_by_length:
        raise ConfigError(
            "data.packing and data.group_by_length are both set. Fix: set only one; "
            "packing leaves no padding to group away."
        )
    if packing_split and not packing:
        raise ConfigError(
            "data.packing_split is set without data.packing. Fix: set data.packing: true as well, "
            "or drop data.packing_split."
        )
