"""Each device's share of the batches: every global batch exactly once, fillers where the count does not divide."""

from __future__ import annotations

from torch.utils.data import DataLoader, SequentialSampler

from lit_lora.data.resumable import ResumableBatchSampler
from lit_lora.data.sharding import (
    FILLER_KEY,
    FillerBatch,
    ShardedCollator,
    ShardedDataset,
    device_share,
    eval_share,
)

BATCHES = [[i] for i in range(11)]


def test_device_r_takes_every_nth_batch_and_a_filler_past_the_last_group():
    zero, one = list(device_share(BATCHES, 2, 0)), list(device_share(BATCHES, 2, 1))
    assert zero == [[0], [2], [4], [6], [8], [10]]
    assert one[:5] == [[1], [3], [5], [7], [9]] and one[5] == [10]
    assert isinstance(one[5], FillerBatch) and not any(isinstance(b, FillerBatch) for b in zero)
    # Three devices: 11 = 3 x 3 + 2, so the third device fills once.
    shares = [list(device_share(BATCHES, 3, rank)) for rank in range(3)]
    assert [len(share) for share in shares] == [4, 4, 4]
    real = sorted(b[0] for share in shares for b in share if not isinstance(b, FillerBatch))
    assert real == list(range(11))


def test_a_step_of_two_devices_covers_the_batches_of_one_device_with_twice_the_accumulation():
    # Accumulation 2 per device: local batches 2k and 2k + 1 of both devices form step k.
    shares = [list(device_share(BATCHES, 2, rank)) for rank in range(2)]
    for step in range(3):
        trained = {b[0] for share in shares for b in share[2 * step : 2 * step + 2] if not isinstance(b, FillerBatch)}
        assert trained == set(range(4 * step, min(4 * step + 4, 11)))


def test_the_batch_sampler_counts_and_resumes_one_device_share():
    sampler = ResumableBatchSampler(SequentialSampler(range(21)), 2, False, num_devices=2, rank=1)
    assert len(sampler) == 6  # 11 global batches
    assert list(sampler)[:2] == [[2, 3], [6, 7]]
    sampler.skip = 5
    assert list(sampler) == [[20]] and isinstance(list(sampler)[0], FillerBatch)


def test_a_filler_batch_is_marked_through_the_loader():
    # Global batches [0, 1], [2, 3], [4]: the second device's second batch is a filler.
    sampler = ResumableBatchSampler(SequentialSampler(range(5)), 2, False, num_devices=2, rank=1)
    loader = DataLoader(
        ShardedDataset([{"x": i} for i in range(5)]),
        batch_sampler=sampler,
        collate_fn=ShardedCollator(lambda rows: {"x": [row["x"] for row in rows]}),
    )
    assert list(loader) == [{"x": [2, 3]}, {"x": [4], FILLER_KEY: True}]


def test_evaluation_shares_hold_every_row_once():
    rows = list(range(7))
    assert [eval_share(rows, 3, rank) for rank in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert eval_share(rows, 1, 0) is rows
