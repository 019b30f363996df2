"""Preference pairs: both sides rendered like SFT with the prompt masked, batched as chosen rows then rejected rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_lora.data import PreferenceDataModule
from lit_lora.errors import ConfigError
from tests.helpers.sft import ids, masked, write_jsonl

PROMPT = "<s> <|im_start|> user \n Say yes <|im_end|> \n <|im_start|> assistant \n"
PAIRS = [
    {"prompt": "Say yes", "chosen": "yes", "rejected": "no thanks"},
    # Conversational: a system turn in the prompt, the responses as assistant turns.
    {
        "prompt": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say yes"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    },
]


def test_each_side_masks_the_prompt_and_batches_chosen_then_rejected(tmp_path: Path, chat_path: str) -> None:
    data = PreferenceDataModule(
        write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tokenizer_name_or_path=chat_path, batch_size=2
    )
    data.setup("fit")
    first = data.dataset("train")[0]
    assert first["input_ids"] == ids(PROMPT + " yes <|im_end|> \n")
    assert first["labels"] == masked(PROMPT) + ids("yes <|im_end|> \n")
    assert first["rejected_input_ids"] == ids(PROMPT + " no thanks <|im_end|> \n")
    assert first["rejected_labels"] == masked(PROMPT) + ids("no thanks <|im_end|> \n")
    system = (
        "<s> <|im_start|> system \n Be brief <|im_end|> \n <|im_start|> user \n Say yes <|im_end|> \n "
        "<|im_start|> assistant \n"
    )
    second = data.dataset("train")[1]
    assert second["labels"] == masked(system) + ids("yes <|im_end|> \n")
    assert second["rejected_labels"] == masked(system) + ids("no <|im_end|> \n")

    batch = next(iter(data.train_dataloader()))
    order = [data.dataset("train")[i] for i in range(2)]
    rows = [*(o["input_ids"] for o in order), *(o["rejected_input_ids"] for o in order)]
    assert batch["input_ids"].shape == (4, max(map(len, rows)))
    decoded = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert sorted(decoded[:2]) == sorted(rows[:2]) and sorted(decoded[2:]) == sorted(rows[2:])
    # The memory estimate sees the longest side of any pair, and two sequences per pair.
    assert data.longest_batch_length() == max(map(len, rows))
    assert data.sequences_per_example == 2


def test_a_pair_with_a_side_cut_before_its_response_is_dropped(tmp_path: Path, chat_path: str) -> None:
    long = {"prompt": "Say yes", "chosen": "yes", "rejected": "no " * 40}
    data = PreferenceDataModule(
        write_jsonl(tmp_path / "pairs.jsonl", [PAIRS[0], long]),
        tokenizer_name_or_path=chat_path,
        max_length=len(ids(PROMPT)),  # room for the prompt only
    )
    with pytest.raises(ConfigError, match="no train example has a trained token"):
        data.setup("fit")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"packing": True}, "data.packing: preference pairs are not packed"),
        ({"train_on_prompt": True}, "data.train_on_prompt"),
    ],
)
def test_settings_that_do_not_apply_are_refused(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PreferenceDataModule(write_jsonl(tmp_path / "pairs.jsonl", PAIRS), **settings)


def test_bad_rejected_field_names_the_row(tmp_path: Path, chat_path: str) -> None:
    rows = [PAIRS[0], {"prompt": "Say yes", "chosen": "yes", "rejected": 3}]
    data = PreferenceDataModule(write_jsonl(tmp_path / "pairs.jsonl", rows), tokenizer_name_or_path=chat_path)
    with pytest.raises(ConfigError, match=r"pairs.jsonl.*line 2.*rejected"):
        data.setup("fit")


def test_pairs_whose_sides_encode_the_same_are_counted_and_warned_about_not_refused(
    tmp_path: Path, chat_path: str
) -> None:
    rows = [
        PAIRS[0],
        {"prompt": "Say yes", "chosen": "yes", "rejected": "yes"},
        # A response as text and as an assistant turn renders the same.
        {"prompt": "Say yes", "chosen": [{"role": "assistant", "content": "ok"}], "rejected": "ok"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    data = PreferenceDataModule(path, tokenizer_name_or_path=chat_path)
    with pytest.warns(
        UserWarning,
        match=(
            r"^data\.train_file '.*pairs\.jsonl': 2 of 3 pairs have a 'chosen' that encodes the same as their "
            r"'rejected' \(the same response, or the same up to data\.max_length\), first at line 2; DPO learns "
            r"nothing from them\. Fix: drop those rows, or give them a different rejected response\.$"
        ),
    ):
        data.setup("fit")
    assert data.identical == {f"data.train_file '{path}'": 2}
    assert len(data.dataset("train")) == 3
