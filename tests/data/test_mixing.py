"""Mixing several training sets: weighted draws and field renames."""

from __future__ import annotations

from collections import Counter

import pytest
from datasets import Dataset

from lit_lora.data import SFTDataModule
from lit_lora.data.mixing import DataSource, MixSampler, rename_fields
from lit_lora.errors import ConfigError
from tests.helpers.sft import write_jsonl


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


# ---------------------------------------------------------------- in the data module
QA = [{"question": f"Q{i}", "answer": f"A{i}"} for i in range(30)]
CHATS = [
    {"messages": [{"role": "user", "content": f"U{i}"}, {"role": "assistant", "content": f"R{i}"}]} for i in range(10)
]


@pytest.fixture
def qa_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "qa.jsonl", QA)


@pytest.fixture
def chat_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "chat.jsonl", CHATS)


def test_renamed_fields_tokenize_like_the_expected_columns(tmp_path, qa_file, chat_path):
    renamed = [{"prompt": row["question"], "completion": row["answer"]} for row in QA]
    plain = SFTDataModule(write_jsonl(tmp_path / "pc.jsonl", renamed), tokenizer_name_or_path=chat_path)
    mapped = SFTDataModule(
        qa_file, fields={"prompt": "question", "completion": "answer"}, tokenizer_name_or_path=chat_path
    )
    assert mapped.dataset("train")[:] == plain.dataset("train")[:]


def test_a_mix_holds_each_set_tokenized_as_alone_and_draws_by_weight(qa_file, chat_file, chat_path):
    fields = {"prompt": "question", "completion": "answer"}
    mix = [
        DataSource(qa_file, format="prompt_completion", fields=fields, weight=1.0),
        DataSource(chat_file, weight=3.0),
    ]
    data = SFTDataModule(mix=mix, tokenizer_name_or_path=chat_path)
    alone = [
        SFTDataModule(qa_file, fields=fields, tokenizer_name_or_path=chat_path).dataset("train"),
        SFTDataModule(chat_file, tokenizer_name_or_path=chat_path).dataset("train"),
    ]
    assert data.dataset("train")[:] == {k: alone[0][:][k] + alone[1][:][k] for k in ("input_ids", "labels")}
    sampler = data.train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, MixSampler)
    assert (sampler.sizes, sampler.weights.tolist(), len(sampler)) == ([30, 10], [1.0, 3.0], 40)
    # The loader serves what the sampler draws: the chats (indices 30..39) 3 times as often.
    drawn = Counter(int(i >= 30) for i in sampler)
    assert drawn[1] > drawn[0]
    assert data.dataset("validation") is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, r"data\.train_file and data\.mix: set exactly one of them"),
        ({"train_file": "QA", "mix": "ONE"}, r"data\.train_file and data\.mix: set exactly one of them"),
        ({"mix": "ONE", "val_fraction": 0.1}, r"data\.val_fraction does not apply to data\.mix yet"),
        ({"mix": "ONE", "packing": True}, r"data\.packing does not apply to data\.mix yet"),
        ({"mix": [DataSource("QA", weight=0.0)]}, r"data\.mix\[0\]\.weight: 0\.0 is not a finite number > 0\. Fix: "),
        ({"mix": [DataSource("QA", format="vicuna")]}, r"data\.mix\[0\]\.format: unknown format 'vicuna'"),
        ({"mix": [DataSource("absent.jsonl")]}, r"data\.mix\[0\]\.path: 'absent\.jsonl' does not exist"),
    ],
)
def test_bad_mix_settings_name_the_field_and_the_fix(qa_file, settings, message):
    resolved = {
        key: ([DataSource(qa_file)] if value == "ONE" else qa_file if value == "QA" else value)
        for key, value in settings.items()
    }
    resolved["mix"] = [
        DataSource(qa_file if s.path == "QA" else s.path, s.format, s.fields, s.weight) for s in resolved.get("mix", [])
    ] or None
    with pytest.raises(ConfigError, match=message):
        SFTDataModule(**resolved)


def test_a_set_left_empty_by_truncation_is_named(tmp_path, qa_file, chat_path):
    # A system turn makes these prompts longer than 12 tokens; the questions' are 10.
    system = {"role": "system", "content": "Be brief and precise"}
    chats = write_jsonl(tmp_path / "long.jsonl", [{"messages": [system, *row["messages"]]} for row in CHATS])
    mix = [DataSource(chats), DataSource(qa_file, fields={"prompt": "question", "completion": "answer"})]
    with pytest.raises(ConfigError, match=r"data\.mix\[0\]\.path '.*long\.jsonl': no example has a trained token"):
        SFTDataModule(mix=mix, max_length=12, tokenizer_name_or_path=chat_path).dataset("train")
