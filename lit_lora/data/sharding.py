"""Each device's share of the data: the device count is a throughput knob, not a hyperparameter.

With the same seed and effective batch, a run on N devices trains in every optimizer
step exactly the examples that one device with N times the gradient accumulation
trains. The epoch order (shuffled, length-grouped, mixed or packed) is made once,
the same on every device, and cut into batches as one device would cut it; device
``r`` takes the batches ``r, r + N, r + 2N, ...``. A step of ``A`` micro-batches per
device then covers global batches ``kAN .. (k+1)AN - 1``, the same ones as step ``k``
of the single device, and the loss, normalised over the supervised units of the whole
step on all devices (``lit_lora.training.step_loss``), is the same sum.

Every device must run the same number of micro-batches, or the gradient all-reduce
waits forever. When the batches of an epoch do not divide by N, the devices left
without one in the last group run a *filler*: a copy of a real batch marked with
:data:`FILLER_KEY`, whose loss and count the module multiplies by zero. The
trajectory is then exactly the single device's, at the cost of at most N - 1 batches
an epoch.

Lightning would put its own ``DistributedSampler`` in place of the sampler of a loader
it finds unsharded, losing the order; lit_lora's CLI sets
``trainer.use_distributed_sampler: false`` and the data modules shard every loader here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils.data import Dataset

# A training batch whose loss and count must not count (see the module docstring).
FILLER_KEY = "lit_lora_filler"


class FillerBatch(list):
    """The indices of a batch a device runs only to stay in step with the others."""


class FillerRows(list):
    """The rows read for a :class:`FillerBatch`."""


def device_share(batches: Iterable[list[Any]], num_devices: int, rank: int) -> Iterator[list[Any]]:
    """Device ``rank``'s batches of the epoch's global ``batches``: every ``num_devices``-th, from ``rank``.

    Args:
        batches: The batches one device would train, in order.
        num_devices: Devices sharing them.
        rank: This device's index among them.

    Yields:
        The device's batches; in a last group with fewer batches than devices, a
        :class:`FillerBatch` copy of the group's first batch for the devices past its end.
    """
    group: list[list[Any]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == num_devices:
            yield group[rank]
            group = []
    if group:
        yield group[rank] if rank < len(group) else FillerBatch(group[0])


def shared_batch_count(num_batches: int, num_devices: int) -> int:
    """The micro-batches each device runs in an epoch of ``num_batches`` global batches."""
    return -(-num_batches // num_devices)


class ShardedDataset(Dataset):
    """Reads a batch of rows from ``dataset``, marking those read for a :class:`FillerBatch`.

    The DataLoader hands a batch sampler's index list to ``__getitems__`` as it is, so
    the mark survives to the collator (also through worker processes, which unpickle
    the list with its class).

    Args:
        dataset: What the training loader indexes: examples, or packs of them.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[Any]) -> list[Any]:
        # A datasets.Dataset reads a batch of rows in one call; others row by row, as a DataLoader would.
        read = getattr(self.dataset, "__getitems__", None)
        rows = read(list(indices)) if read is not None else [self.dataset[index] for index in indices]
        return FillerRows(rows) if isinstance(indices, FillerBatch) else rows

    def __len__(self) -> int:
        return len(self.dataset)


class ShardedCollator:
    """Batches rows with ``collate``, adding :data:`FILLER_KEY` to a filler's batch.

    Args:
        collate: The task's training collator.
    """

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, rows: list[Any]) -> dict[str, Any]:
        batch = self.collate(list(rows))
        if isinstance(rows, FillerRows):
            batch[FILLER_KEY] = True
        return batch


def eval_share(examples: Any, num_devices: int, rank: int) -> Any:
    """Device ``rank``'s contiguous share of evaluation ``examples`` (a ``Dataset`` or a list), no row twice.

    Evaluation metrics sum over devices (torchmetrics syncs them), so shares may differ
    in size by one: no row is repeated to even them out, as Lightning's
    ``DistributedSampler`` would, which would count it twice.
    """
    if num_devices == 1:
        return examples
    size = len(examples)
    start, stop = size * rank // num_devices, size * (rank + 1) // num_devices
    if hasattr(examples, "select"):
        return examples.select(range(start, stop))
    return examples[start:stop]
