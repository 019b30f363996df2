"""ResumableBatchSampler and ResumableDataLoader: counting consumed batches and resuming after them.

Covers what ``state_dict()`` counts (batches handed out, also with worker processes
that prefetch), that ``load_state_dict()`` resumes with exactly the uninterrupted
pass's remaining batches and only for one pass, that ``set_epoch`` after ``iter()``
still decides the order, that skipped examples are never loaded, the batch-sampler
type check, and that Lightning treats the loader as stateful and keeps both classes
when it re-instantiates the loader with a distributed sampler.
"""

from __future__ import annotations

import lightning
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    SequentialSampler,
)

from lit_lora.data.resumable import ResumableBatchSampler, ResumableDataLoader, count_batches_on
from lit_lora.data.sampler import EpochShuffleSampler
from lit_lora.errors import ConfigError

NUM_EXAMPLES = 10
BATCH_SIZE = 2  # 5 batches per pass

# torch's multi-process iterator calls iter(batch_sampler) twice when it starts
# (_BaseDataLoaderIter.__init__ and _reset(first_iter=True)); a skip consumed by the
# first, discarded, call would make a resumed pass start the epoch over.
WORKERS_ITERATE_THE_SAMPLER_TWICE = pytest.param(2, id="2-workers")


class RecordingDataset(Dataset):
    """``dataset[i] == i``; remembers every index asked for, in order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.requested: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        self.requested.append(index)
        return index


def make_loader(num_workers: int = 0, seed: int = 7, dataset=None) -> ResumableDataLoader:
    sampler = EpochShuffleSampler(NUM_EXAMPLES, seed=seed)
    return ResumableDataLoader(
        dataset if dataset is not None else list(range(NUM_EXAMPLES)),
        batch_sampler=ResumableBatchSampler(sampler, BATCH_SIZE, drop_last=False),
        num_workers=num_workers,
    )


def as_lists(batches) -> list[list[int]]:
    return [batch.tolist() for batch in batches]


def epoch_batches(epoch: int, seed: int = 7) -> list[list[int]]:
    """The batches of an uninterrupted pass, computed from the sampler alone."""
    sampler = EpochShuffleSampler(NUM_EXAMPLES, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i : i + BATCH_SIZE] for i in range(0, NUM_EXAMPLES, BATCH_SIZE)]


def test_a_fresh_loader_reports_no_batches_consumed():
    assert make_loader().state_dict() == {"epoch": None, "batches": 0, "num_devices": 1}


def test_state_dict_counts_the_batches_taken_from_the_iterator():
    loader = make_loader()
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    assert loader.state_dict() == {"epoch": 0, "batches": 3, "num_devices": 1}


def test_state_dict_counts_a_whole_pass_after_it_ends():
    loader = make_loader()
    assert len(list(loader)) == 5
    assert loader.state_dict() == {"epoch": 0, "batches": 5, "num_devices": 1}


def test_with_two_workers_state_dict_counts_consumed_not_prefetched_batches():
    # Two workers with prefetch_factor 2 have up to 4 batches in flight after the
    # first request; a resumed run must skip only what the training loop received.
    loader = make_loader(num_workers=2)
    iterator = iter(loader)
    taken = [next(iterator).tolist() for _ in range(2)]
    assert loader.state_dict() == {"epoch": 0, "batches": 2, "num_devices": 1}
    assert taken == epoch_batches(0)[:2]
    del iterator  # shut the workers down


@pytest.mark.parametrize("consumed", [0, 1, 3, 5])
def test_load_state_dict_resumes_with_the_uninterrupted_passs_remaining_batches(consumed):
    full = epoch_batches(2)
    loader = make_loader()
    loader.batch_sampler.sampler.set_epoch(2)
    loader.load_state_dict({"epoch": 2, "batches": consumed})
    assert as_lists(loader) == full[consumed:]
    # The count goes on from the skipped batches: a second kill in this pass
    # must save the position in the whole epoch, not in the shortened pass.
    assert loader.state_dict() == {"epoch": 2, "batches": 5, "num_devices": 1}


def test_the_pass_after_a_resumed_one_is_whole_again():
    loader = make_loader()
    loader.batch_sampler.sampler.set_epoch(1)
    loader.load_state_dict({"epoch": 1, "batches": 3, "num_devices": 1})
    assert as_lists(loader) == epoch_batches(1)[3:]
    loader.batch_sampler.sampler.set_epoch(2)
    assert as_lists(loader) == epoch_batches(2)
    assert loader.state_dict() == {"epoch": 2, "batches": 5, "num_devices": 1}


def device_loader(num_devices: int, rank: int) -> ResumableDataLoader:
    sampler = EpochShuffleSampler(NUM_EXAMPLES, seed=7)
    batches = ResumableBatchSampler(sampler, BATCH_SIZE, drop_last=False, num_devices=num_devices, rank=rank)
    return ResumableDataLoader(list(range(NUM_EXAMPLES)), batch_sampler=batches)


def test_a_resume_on_another_device_count_skips_the_same_global_batches():
    # Two devices had 2 batches each: the epoch's first 4 global batches. One device
    # resumes after all 4 of them; a third pair of devices would skip 2 each.
    state = {"epoch": 0, "batches": 2, "num_devices": 2}
    one = device_loader(1, 0)
    one.load_state_dict(state)
    assert as_lists(one) == epoch_batches(0)[4:]
    # Back from one device to two: 4 batches trained are 2 per device.
    two = device_loader(2, 0)
    two.load_state_dict({"epoch": 0, "batches": 4, "num_devices": 1})
    iterator = iter(two)
    next(iterator)
    assert two.state_dict() == {"epoch": 0, "batches": 3, "num_devices": 2}


def test_a_resume_that_another_device_count_cannot_share_evenly_is_refused():
    loader = device_loader(2, 0)
    loader.load_state_dict({"epoch": 0, "batches": 3, "num_devices": 1})
    with pytest.raises(ConfigError, match="3 batches of this epoch over 1 device"):
        list(loader)


def test_lightnings_batch_counts_follow_the_loader_to_another_device_count():
    # Two devices had trained 4 batches each, the checkpoint written as the 4th ended
    # (Lightning counts it ready but not completed): on one device that is 8 and 7.
    progress = {"ready": 4, "completed": 3, "started": 4, "processed": 4}
    checkpoint = {
        "loops": {
            "fit_loop": {
                "state_dict": {"combined_loader": [{"epoch": 0, "batches": 4, "num_devices": 2}]},
                "epoch_loop.batch_progress": {"current": dict(progress), "total": {**progress, "ready": 10}},
            }
        }
    }
    count_batches_on(checkpoint, 1)
    counts = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert counts["current"] == {"ready": 8, "completed": 7, "started": 8, "processed": 8}
    assert counts["total"]["ready"] == 14
    # On the device count it was written with, nothing changes.
    count_batches_on(checkpoint, 2)
    assert counts["current"]["ready"] == 8


def test_state_dict_of_a_resumed_pass_counts_the_skipped_batches_as_consumed():
    loader = make_loader()
    loader.load_state_dict({"epoch": 0, "batches": 2, "num_devices": 1})
    iterator = iter(loader)
    next(iterator)
    assert loader.state_dict() == {"epoch": 0, "batches": 3, "num_devices": 1}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_epoch_after_iter_but_before_the_first_batch_still_decides_the_order(num_workers):
    # Lightning creates the epoch's iterator first and calls set_epoch afterwards
    # (also when it resumes), so nothing may read the sampler's order in iter().
    assert epoch_batches(3) != epoch_batches(0)  # otherwise the test proves nothing
    loader = make_loader(num_workers=num_workers)
    iterator = iter(loader)
    loader.batch_sampler.sampler.set_epoch(3)
    assert as_lists(iterator) == epoch_batches(3)


@pytest.mark.parametrize("num_workers", [0, WORKERS_ITERATE_THE_SAMPLER_TWICE])
def test_a_resumed_pass_with_set_epoch_after_iter_yields_the_remaining_batches(num_workers):
    # The order Lightning uses on resume: load_state_dict, iter(), set_epoch, next().
    loader = make_loader(num_workers=num_workers)
    loader.load_state_dict({"epoch": 3, "batches": 1, "num_devices": 1})
    iterator = iter(loader)
    loader.batch_sampler.sampler.set_epoch(3)
    assert as_lists(iterator) == epoch_batches(3)[1:]
    assert loader.state_dict() == {"epoch": 3, "batches": 5, "num_devices": 1}


def test_a_saved_position_of_another_epoch_is_not_applied():
    # A checkpoint written on epoch 0's last batch is resumed at the start of epoch 1.
    loader = make_loader()
    loader.load_state_dict({"epoch": 0, "batches": 5, "num_devices": 1})
    loader.batch_sampler.sampler.set_epoch(1)
    assert as_lists(loader) == epoch_batches(1)


def test_skipped_batches_are_never_loaded():
    dataset = RecordingDataset(NUM_EXAMPLES)
    loader = make_loader(dataset=dataset)
    loader.batch_sampler.sampler.set_epoch(1)
    loader.load_state_dict({"epoch": 1, "batches": 3, "num_devices": 1})
    batches = as_lists(loader)
    remaining = [index for batch in epoch_batches(1)[3:] for index in batch]
    assert batches == epoch_batches(1)[3:]
    assert dataset.requested == remaining


def test_the_length_stays_the_whole_pass_after_load_state_dict():
    # Lightning adds the batches already trained to its own count on resume, so a
    # shortened len() would end the resumed epoch early.
    loader = make_loader()
    loader.load_state_dict({"epoch": 0, "batches": 3, "num_devices": 1})
    assert len(loader) == 5


def test_a_plain_batch_sampler_is_refused():
    with pytest.raises(TypeError, match="ResumableBatchSampler"):
        ResumableDataLoader(list(range(4)), batch_sampler=BatchSampler(SequentialSampler(range(4)), 2, False))


def test_batch_size_without_a_resumable_batch_sampler_is_refused():
    # DataLoader then builds its own plain BatchSampler, which cannot skip.
    with pytest.raises(TypeError, match="ResumableBatchSampler"):
        ResumableDataLoader(list(range(4)), batch_size=2)


def test_lightning_sees_the_loader_as_stateful():
    # Lightning saves and restores only loaders that pass this check.
    assert isinstance(make_loader(), _Stateful)


@pytest.mark.parametrize("in_hook", [False, True], ids=["built-outside-a-hook", "built-in-train_dataloader"])
def test_lightning_reinstantiation_with_a_distributed_sampler_keeps_both_resumable_classes(in_hook):
    # What Lightning does to the training loader under DDP: rebuild it around a
    # DistributedSampler. Rank 1 of 2 without shuffling holds indices 1, 3, 5, 7, 9.
    # Loaders returned by a ``train_dataloader`` hook are built under Lightning's
    # argument capture (the second case), others are rebuilt from their attributes.
    if in_hook:
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = make_loader()
    else:
        loader = make_loader()
    distributed = DistributedSampler(list(range(NUM_EXAMPLES)), num_replicas=2, rank=1, shuffle=False)
    rebuilt = _update_dataloader(loader, sampler=distributed, mode=RunningStage.TRAINING)
    assert type(rebuilt) is ResumableDataLoader
    assert type(rebuilt.batch_sampler) is ResumableBatchSampler
    assert rebuilt.batch_sampler.sampler is distributed
    assert (rebuilt.batch_sampler.batch_size, rebuilt.batch_sampler.drop_last) == (BATCH_SIZE, False)
    assert as_lists(rebuilt) == [[1, 3], [5, 7], [9]]
    # The skip counts this device's batches.
    rebuilt.load_state_dict({"epoch": 0, "batches": 1, "num_devices": 1})
    assert as_lists(rebuilt) == [[5, 7], [9]]
    assert rebuilt.state_dict() == {"epoch": 0, "batches": 3, "num_devices": 1}


class RecordingModule(lightning.LightningModule):
    """Trains one scalar on the index batches and records them as ``(epoch, batch)``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch.tolist()))
        return self.weight * batch.float().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return make_loader()


def fit(root, module, ckpt_path=None):
    # Step checkpoints every 5 optimizer steps: the first lands on epoch 0's last batch.
    checkpoint = ModelCheckpoint(
        dirpath=root, filename="step{step}", every_n_train_steps=5, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer = lightning.Trainer(
        default_root_dir=root,
        max_epochs=2,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def test_resuming_from_a_step_checkpoint_on_an_epochs_last_batch_trains_the_next_epoch_whole(tmp_path):
    uninterrupted = RecordingModule()
    fit(tmp_path / "a", uninterrupted)
    assert [epoch for epoch, _ in uninterrupted.seen] == [0] * 5 + [1] * 5
    resumed = RecordingModule()
    trainer = fit(tmp_path / "b", resumed, ckpt_path=tmp_path / "a" / "step5.ckpt")
    assert resumed.seen == uninterrupted.seen[5:]
    assert trainer.global_step == 10
