"""Packing examples into sequences, grouping them by length, and both through the data module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.modeling_flash_attention_utils import (
    prepare_fa_kwargs_from_position_ids,
)

from lit_lora.data import SFTDataModule
from lit_lora.data.packing import (
    PackedCollator,
    PackedDataset,
    PackingSampler,
    best_fit_decreasing,
    split_packs,
)
from lit_lora.data.sampler import LengthGroupedSampler
from lit_lora.errors import ConfigError
from tests.helpers.sft import IGNORE, WORDS, write_jsonl

LENGTHS = torch.randint(1, 65, (300,), generator=torch.Generator().manual_seed(0)).tolist()


def test_best_fit_decreasing_by_hand():
    # 5 opens bin 0 (3 left), 4 bin 1 (4 left); the first 3 takes the tighter bin 0, the
    # second 3 bin 1 (1 left); 2 fits nowhere and opens bin 2; 1 fills bin 1.
    assert best_fit_decreasing([5, 4, 3, 3, 2, 1], range(6), 8) == [[0, 2], [1, 3, 5], [4]]
    # Equal lengths trade places by the given order; the bins stay the same shape.
    assert best_fit_decreasing([5, 4, 3, 3, 2, 1], [3, 2, 0, 1, 4, 5], 8) == [[0, 3], [1, 2, 5], [4]]


def test_an_example_longer_than_a_pack_is_refused():
    with pytest.raises(ValueError, match="Example 1 has 9 tokens, more than the 8"):
        best_fit_decreasing([3, 9], range(2), 8)


def test_packs_hold_every_example_once_and_never_overflow():
    sampler = PackingSampler(LENGTHS, max_length=128, seed=7)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        packs = list(sampler)
        assert len(packs) == len(sampler)  # Lightning's schedule relies on len
        assert sorted(index for pack in packs for index in pack) == list(range(len(LENGTHS)))
        assert max(sum(LENGTHS[i] for i in pack) for pack in packs) <= 128
        epochs.append(packs)
    # Best fit leaves little room: fewer packs than a 10% overhead over the tokens needs.
    assert len(sampler) <= 1.1 * sum(LENGTHS) / 128
    # Every epoch packs and orders anew; the same seed and epoch replays it, as a resumed run needs.
    assert epochs[0] != epochs[1] != epochs[2]
    assert {frozenset(pack) for pack in epochs[0]} != {frozenset(pack) for pack in epochs[1]}
    resumed = PackingSampler(LENGTHS, max_length=128, seed=7)
    resumed.set_epoch(1)
    assert list(resumed) == epochs[1]
    assert list(PackingSampler(LENGTHS, max_length=128, seed=8)) != epochs[0]


def test_split_packs_by_hand():
    # Capacity 8: example 1 (4 tokens) is cut after 3 behind example 0 (5), its last token
    # opens the next pack, and 2 + 3 + 2 tokens of example 4 fill it; the last pack holds 2.
    assert split_packs([5, 4, 3, 2, 4], range(5), 8) == [[0, (1, 0, 3)], [(1, 3, 4), 2, 3, (4, 0, 2)], [(4, 2, 4)]]
    # An example longer than a pack is cut more than once.
    assert split_packs([7, 2], [1, 0], 3) == [[1, (0, 0, 1)], [(0, 1, 4)], [(0, 4, 7)]]


def _pieces(pack: list, lengths: list[int]) -> list[tuple[int, int, int]]:
    """A pack's items as (index, start, stop), whole examples included."""
    return [(item, 0, lengths[item]) if isinstance(item, int) else item for item in pack]


def test_split_packs_hold_every_token_once_and_fill_every_pack_but_the_last():
    sampler = PackingSampler(LENGTHS, max_length=128, seed=7, split=True)
    assert len(sampler) == -(-sum(LENGTHS) // 128)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        packs = list(sampler)
        assert len(packs) == len(sampler)
        sizes = [sum(stop - start for _, start, stop in _pieces(pack, LENGTHS)) for pack in packs]
        assert sizes[:-1] == [128] * (len(packs) - 1) and 0 < sizes[-1] <= 128
        # Every token of every example exactly once: each example's pieces tile [0, length).
        tokens = sorted(
            (index, token)
            for pack in packs
            for index, start, stop in _pieces(pack, LENGTHS)
            for token in range(start, stop)
        )
        assert tokens == [(index, token) for index, length in enumerate(LENGTHS) for token in range(length)]
        # Only the first and last item of a pack can be pieces, and a continuation opens its pack.
        for previous, pack in zip([[]] + packs, packs, strict=False):
            for position, item in enumerate(pack):
                if isinstance(item, tuple):
                    index, start, _ = item
                    assert position == 0 if start > 0 else position == len(pack) - 1
                    if start > 0:
                        assert previous[-1] == (index, previous[-1][1], start)
        epochs.append(packs)
    assert epochs[0] != epochs[1] != epochs[2]
    resumed = PackingSampler(LENGTHS, max_length=128, seed=7, split=True)
    resumed.set_epoch(1)
    assert list(resumed) == epochs[1]


def test_a_continuation_restarts_its_positions_and_loses_only_its_first_target():
    examples = [
        {"input_ids": [10, 11, 12], "labels": [IGNORE, 11, 12]},
        {"input_ids": [20, 21, 22, 23, 24], "labels": [IGNORE, 21, 22, 23, 24]},
        {"input_ids": [30, 31], "labels": [IGNORE, 31]},
    ]
    packs = split_packs([3, 5, 2], [0, 1, 2], 6)
    assert packs == [[0, (1, 0, 3)], [(1, 3, 5), 2]]
    batch = PackedCollator(pad_token_id=0)([PackedDataset(examples)[pack] for pack in packs])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 22], [23, 24, 30, 31, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 1]]
    # 23's predictor (22) ends the other row: masked; the continuation's other labels stay.
    assert batch["labels"].tolist() == [[IGNORE, 11, 12, IGNORE, 21, 22], [IGNORE, 24, IGNORE, 31, IGNORE, IGNORE]]
    # Each row starts a sequence at its least position, as flash attention's padding-free
    # path requires to find the sequence starts (a continuation going on at position 3
    # would be left out of every sequence there).
    for row in batch["position_ids"]:
        (starts, _), _ = prepare_fa_kwargs_from_position_ids(row[None])
        assert starts[0].item() == 0 and starts.tolist() == sorted(set(starts.tolist()))


def test_collated_packs_restart_positions_and_mask_the_boundaries():
    examples = [
        {"input_ids": [10, 11, 12], "labels": [IGNORE, 11, 12]},
        {"input_ids": [20, 21], "labels": [20, 21]},  # trained from its first token
        {"input_ids": [30, 31, 32, 33], "labels": [IGNORE, IGNORE, 32, 33]},
    ]
    batch = PackedCollator(pad_token_id=0, pad_to_multiple_of=4)([examples[:2], examples[2:]])
    assert sorted(batch) == ["input_ids", "labels", "position_ids"]
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 0, 0, 0], [30, 31, 32, 33, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    # Label 20 would be the target of token 12, the previous example's last: masked.
    assert batch["labels"].tolist() == [
        [IGNORE, 11, 12, IGNORE, 21, IGNORE, IGNORE, IGNORE],
        [IGNORE, IGNORE, 32, 33, IGNORE, IGNORE, IGNORE, IGNORE],
    ]


def test_length_grouped_batches_hold_similar_lengths():
    batch_size = 4
    sampler = LengthGroupedSampler(LENGTHS, batch_size, seed=3, mega_batches=5)
    first = list(sampler)
    assert sorted(first) == list(range(len(LENGTHS))) and len(sampler) == len(LENGTHS)
    batches = [[LENGTHS[i] for i in first[s : s + batch_size]] for s in range(0, len(first), batch_size)]
    for lengths in batches:
        assert lengths == sorted(lengths, reverse=True)
    # One mega-batch for the whole epoch: the longest batch first, the rest shuffled
    # rather than longest to shortest (no length curriculum).
    whole = list(LengthGroupedSampler(LENGTHS, batch_size, seed=3, mega_batches=len(LENGTHS) // batch_size))
    longest = [max(LENGTHS[i] for i in whole[s : s + batch_size]) for s in range(0, len(whole), batch_size)]
    assert longest[0] == max(LENGTHS)
    assert longest[1:] != sorted(longest[1:], reverse=True)

    def padding(order: list[int]) -> int:
        batches = [[LENGTHS[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
        return sum(max(batch) * len(batch) - sum(batch) for batch in batches)

    shuffled = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(3)).tolist()
    assert padding(first) < padding(shuffled) / 3
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    resumed = LengthGroupedSampler(LENGTHS, batch_size, seed=3, mega_batches=5)
    resumed.set_epoch(1)
    assert list(resumed) == second


@pytest.fixture
def varied_file(tmp_path: Path) -> str:
    words = WORDS.split()
    rows = [
        {"prompt": " ".join(words[: 1 + i % 7]), "completion": " ".join(words[i % 5 : i % 5 + 1 + i % 4])}
        for i in range(20)
    ]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_packing_and_length_grouping_exclude_each_other(varied_file: str):
    with pytest.raises(ConfigError, match=r"data\.packing and data\.group_by_length are both set"):
        SFTDataModule(varied_file, packing=True, group_by_length=True)


def test_packing_split_needs_packing(varied_file: str):
    with pytest.raises(ConfigError, match=r"data\.packing_split is set without data\.packing"):
        SFTDataModule(varied_file, packing_split=True)


def _supervised_tokens(batches: list[dict[str, torch.Tensor]]) -> int:
    return sum((batch["labels"][:, 1:] != IGNORE).sum().item() for batch in batches)


def test_packed_training_batches_carry_every_example(varied_file: str, chat_path: str):
    data = SFTDataModule(
        varied_file, val_fraction=0.2, tokenizer_name_or_path=chat_path, max_length=64, batch_size=2, packing=True
    )
    data.setup("fit")
    train = data.dataset("train")
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    assert all(sorted(batch) == ["input_ids", "labels", "position_ids"] for batch in batches)
    assert all(batch["input_ids"].shape[1] <= 64 for batch in batches)
    # Each example restarts the positions once; the tokens are all there, and the trained ones.
    starts = sum(
        ((batch["position_ids"] == 0) & (batch["input_ids"] != data.tokenizer.pad_token_id)).sum().item()
        for batch in batches
    )
    assert starts == len(train)
    assert len(batches) < len(train) / 2 / 2  # at least two examples per packed row
    unpacked = SFTDataModule(varied_file, val_fraction=0.2, tokenizer_name_or_path=chat_path, max_length=64)
    unpacked.setup("fit")
    assert _supervised_tokens(batches) == _supervised_tokens(list(unpacked.train_dataloader()))
    # Evaluation stays unpacked.
    assert "attention_mask" in next(iter(data.val_dataloader()))


def test_split_packed_training_batches_fill_every_row(varied_file: str, chat_path: str):
    def module(**options) -> SFTDataModule:
        data = SFTDataModule(varied_file, val_fraction=0.2, tokenizer_name_or_path=chat_path, max_length=64, **options)
        data.setup("fit")
        return data

    data = module(batch_size=2, packing=True, packing_split=True)
    train = data.dataset("train")
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    lengths = [len(ids) for ids in train["input_ids"]]
    packs = list(loader.batch_sampler.sampler)
    pieces = [piece for pack in packs for piece in _pieces(pack, lengths)]
    sizes = [sum(stop - start for _, start, stop in _pieces(pack, lengths)) for pack in packs]
    assert sizes == [64] * (len(packs) - 1) + [sum(lengths) - 64 * (len(packs) - 1)]
    # The rows, stripped of their padding, are the shuffled examples end to end: every token once.
    rows = [row for batch in batches for row in batch["input_ids"].tolist()]
    rows = [row[:size] for row, size in zip(rows, sizes, strict=True)]
    order = list(dict.fromkeys(index for index, _, _ in pieces))
    assert sorted(order) == list(range(len(train)))
    assert [token for row in rows for token in row] == [token for index in order for token in train[index]["input_ids"]]
    # Each cut adds a start and takes away the continuation's first target, if it had one.
    cuts = [piece for piece in pieces if piece[1] > 0]
    assert cuts  # the data does get cut
    starts = sum(
        ((batch["position_ids"] == 0) & (batch["input_ids"] != data.tokenizer.pad_token_id)).sum().item()
        for batch in batches
    )
    assert starts == len(train) + len(cuts)
    lost = sum(train[index]["labels"][start] != IGNORE for index, start, _ in cuts)
    unpacked = _supervised_tokens(list(module().train_dataloader()))
    assert _supervised_tokens(batches) == unpacked - lost


@pytest.mark.parametrize("options", [("packing",), ("packing", "packing_split"), ("group_by_length",)])
def test_a_resumed_epoch_continues_with_the_same_batches(varied_file: str, chat_path: str, options: tuple[str, ...]):
    def loader():
        data = SFTDataModule(
            varied_file, tokenizer_name_or_path=chat_path, max_length=64, batch_size=2, **dict.fromkeys(options, True)
        )
        data.setup("fit")
        loader = data.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(1)
        return loader

    whole = loader()
    batches = iter(whole)
    seen = [next(batches) for _ in range(2)]
    state = whole.state_dict()
    rest = list(batches)
    resumed = loader()
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(seen) + len(rest) == len(whole)
    assert len(again) == len(rest)
    for expected, actual in zip(rest, again, strict=True):
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key])
