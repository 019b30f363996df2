from lit_lora.data.sampler import EpochShuffleSampler


def test_each_epoch_has_its_own_reproducible_order():
    sampler = EpochShuffleSampler(8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(8)) and len(sampler) == 8
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    # A fresh sampler (a resumed run) set to epoch 1 replays epoch 1, not epoch 0.
    resumed = EpochShuffleSampler(8, seed=3)
    resumed.set_epoch(1)
    assert list(resumed) == second
