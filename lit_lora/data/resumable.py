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

from lit_lora.data.sharding import device_share, shared_batch_count
from lit_lora.errors import ConfigError


class ResumableBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose passes start after their first ``skip`` batches; one device's share of them.

    The epoch order of ``sampler`` is cut into batches as one device would cut it,
    and device ``rank`` of ``num_devices`` keeps its share (``lit_lora.data.sharding``).
    Skipping here, on index lists, costs nothing: the skipped examples are never
    loaded or collated; ``skip`` counts this device's batches. It is read, not
    consumed, because a multi-worker DataLoader iterates its batch sampler twice
    while starting; :class:`ResumableDataLoader` resets it once its pass has begun.

    Args:
        sampler: The epoch order (example indices, or packs of them).
        batch_size: Items per batch.
        drop_last: Drop a short last batch.
        num_devices: Devices sharing the batches.
        rank: This device's index among them.
    """

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool, num_devices: int = 1, rank: int = 0) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.num_devices = num_devices
        self.rank = rank
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = super().__iter__()
        if self.num_devices > 1:
            batches = device_share(batches, self.num_devices, self.rank)
        return itertools.islice(batches, self.skip, None)

    def __len__(self) -> int:
        return shared_batch_count(super().__len__(), self.num_devices)


class ResumableDataLoader(DataLoader):
    """A DataLoader that reports, and can resume from, the batches consumed this epoch.

    Takes the ``DataLoader`` arguments; ``batch_sampler`` must be a
    :class:`ResumableBatchSampler`. The count is of batches handed to the training
    loop, not of batches that worker processes prepared ahead of it. The state also
    names the epoch (the sampler's ``epoch``), because a checkpoint written on an
    epoch's last batch is resumed by Lightning at the start of the next epoch, which
    must then be trained whole.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, ResumableBatchSampler):
            raise TypeError("ResumableDataLoader needs a ResumableBatchSampler as batch_sampler.")
        self._epoch: int | None = None
        self._consumed = 0
        self._resume_at: dict[str, Any] | None = None

    def _sampler_epoch(self) -> int | None:
        return getattr(self.batch_sampler.sampler, "epoch", None)

    def __iter__(self) -> Iterator[Any]:
        # A generator, so nothing (worker start-up, reading the sampler's order) happens
        # before the first batch is requested: Lightning creates the iterator before it
        # calls ``set_epoch``, and an eager start would shuffle with the previous epoch.
        self._epoch, resume, self._resume_at = self._sampler_epoch(), self._resume_at, None
        same_epoch = resume is not None and resume["epoch"] == self._epoch
        skip = batches_to_skip(resume, self.batch_sampler.num_devices) if same_epoch else 0
        self.batch_sampler.skip = skip
        try:
            iterator = super().__iter__()
        finally:
            self.batch_sampler.skip = 0
        self._consumed = skip
        for batch in iterator:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": e, "batches": n, "num_devices": d}``: each of ``d`` devices had ``n`` batches of epoch ``e``."""
        return {"epoch": self._epoch, "batches": self._consumed, "num_devices": self.batch_sampler.num_devices}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass, if it is of the same epoch, start after the batches already trained."""
        self._resume_at = dict(state)


def batches_to_skip(state: dict[str, Any], num_devices: int) -> int:
    """Each device's share of the batches a loader's ``state`` had handed out, on ``num_devices`` devices.

    A state counts the batches of each of its ``num_devices`` devices; all of them
    together are the epoch's first global batches, which a run on another device
    count shares out anew. A checkpoint is written after an optimizer step, so the
    count divides evenly when each step trains as many examples as before.
    """
    trained = state["batches"] * state.get("num_devices", num_devices)
    skip, left = divmod(trained, num_devices)
    if left:
        raise ConfigError(
            f"The checkpoint stopped after {trained} batches of this epoch over {state['num_devices']} "
            f"device(s), which {num_devices} devices cannot share evenly. Resume on a device count that "
            "divides it, with trainer.accumulate_grad_batches x devices as before."
        )
    return skip


def count_batches_on(checkpoint: dict[str, Any], num_devices: int) -> None:
    """Make Lightning's in-epoch batch counts of ``checkpoint`` those of ``num_devices`` devices.

    Lightning resumes its batch counter from the checkpoint and decides from it when
    an accumulation window closes and which batch is the epoch's last. Resumed on
    another device count, the counter must count this run's batches, as the loader
    does (:func:`batches_to_skip`), or the epoch's last optimizer step is never taken.
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    loaders = (fit_loop.get("state_dict") or {}).get("combined_loader") or [None]
    state = loaders[0]
    if not isinstance(state, dict) or state.get("num_devices", num_devices) == num_devices:
        return
    shift = batches_to_skip(state, num_devices) - state["batches"]
    progress = fit_loop["epoch_loop.batch_progress"]
    for counts in (progress["current"], progress["total"]):
        for name in counts:
            counts[name] += shift
