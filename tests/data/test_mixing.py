"""Mixing several training sets: weighted draws and field renames."""

from __future__ import annotations

from collections import Counter

import pytest
from datasets import Dataset

from lit_lora.data.mixing import MixSampler, rename_fields
from lit_lora.errors import ConfigError


def source_of(index: int, sizes: list[int]) -> int:
    for source, size in enumerate(sizes):
        if index < size:
            return source
        index -= size
    raise AssertionError(index)


def test_draws_follow_the_weights_within_sampling_tolerance():
    sizes, weights = [1000, 200, 50], [0.5, 0.3, 0.2]
    sampler = MixSampler(sizes, weights, seed=0, num_samples=20_000)
    counts = Counter(source_of(i, sizes) for i in sampler)
    for source, weight in enumerate(weights):
        share = counts[source] / 20_000
        # Binomial standard deviation at n = 20000 is at most 0.0036: 4 sigma.
        assert share == pytest.approx(weight, abs=0.015), (source, share)


def test_a_set_is_used_without_repeats_until_it_is_exhausted():
    sizes = [10, 1000]
    sampler = MixSampler(sizes, [1.0, 1.0], seed=3, num_samples=40)
    small = [i for i in sampler if i < 10]
    assert len(small) > 10  # the small set is asked for more than it has
    assert sorted(small[:10]) == list(range(10))  # its first round is a permutation


def test_an_epoch_is_fixed_by_seed_and_epoch():
    a, b = MixSampler([5, 7], [1, 2], seed=1), MixSampler([5, 7], [1, 2], seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert len(a) == 12


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="positive"):
        MixSampler([5, 5], [1.0, 0.0], seed=0)


def test_fields_are_renamed_to_what_the_format_expects():
    rows = Dataset.from_dict({"question": ["q"], "answer": ["a"], "id": ["1"]})
    renamed = rename_fields(rows, {"prompt": "question", "completion": "answer"}, "qa.jsonl")
    assert renamed.column_names == ["prompt", "completion", "id"]
    assert renamed[0] == {"prompt": "q", "completion": "a", "id": "1"}


def test_a_missing_mapped_column_names_the_file_and_the_columns():
    rows = Dataset.from_dict({"question": ["q"]})
    with pytest.raises(ConfigError, match=r"qa.jsonl: fields maps 'completion' to column 'answer'.*\['question'\]"):
        rename_fields(rows, {"prompt": "question", "completion": "answer"}, "qa.jsonl")


def test_a_rename_never_silently_replaces_a_column():
    rows = Dataset.from_dict({"question": ["q"], "prompt": ["other"]})
    with pytest.raises(ConfigError, match="already has a 'prompt' column"):
        rename_fields(rows, {"prompt": "question"}, "qa.jsonl")
