"""The training DataLoader whose position inside an epoch survives a checkpoint.

Lightning saves ``state_dict()`` of every stateful training dataloader in each
checkpoint, and on a mid-epoch resume hands it back through ``load_state_dict()``
before it iterates again. Without that, a run resumed from a step checkpoint would
start the epoch over: the batches before the kill are trained twice, those after it
in another optimizer step than the uninterrupted run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import BatchSampler, DataLoader


class ResumableBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose next pass can start after its first ``skip`` batches.

    Skipping here, on index lists, costs nothing: the skipped examples are never
    loaded or collated. It also sits after any distributed sampler Lightning wraps
    around ``sampler``, so ``skip`` counts this device's batches.
    """

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableDataLoader(DataLoader):
    """A DataLoader that reports, and can resume from, the batches consumed this epoch.

    Takes the ``DataLoader`` arguments; ``batch_sampler`` must be a
    :class:`ResumableBatchSampler`. The count is of batches handed to the training
    loop, not of batches that worker processes prepared ahead of it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, ResumableBatchSampler):
            raise TypeError("ResumableDataLoader needs a ResumableBatchSampler as batch_sampler.")
        self._consumed = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator, so nothing (worker start-up, reading the sampler's order) happens
        # before the first batch is requested: Lightning creates the iterator before it
        # calls ``set_epoch``, and an eager start would shuffle with the previous epoch.
        self._consumed = self.batch_sampler.skip
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"batches": n}``: batches of the current epoch already handed out."""
        return {"batches": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next pass start after the ``state["batches"]`` batches already trained."""
        self.batch_sampler.skip = state["batches"]
