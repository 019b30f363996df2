"""The data module end to end: settings checks, splits, dropped examples, dataloaders, a real Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer

from lit_lora.data import PromptExample, SFTDataModule
from lit_lora.errors import ConfigError
from tests.helpers.sft import IGNORE, VOCAB, ids, masked, write_jsonl

ROWS = [{"prompt": "Hi", "completion": "Hello"}, {"prompt": "How are you", "completion": "Fine"}]
# What the chat tokenizer renders for ROWS: 10 and 12 prompt tokens.
PROMPTS = [
    "<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n",
    "<s> <|im_start|> user \n How are you <|im_end|> \n <|im_start|> assistant \n",
]
RESPONSES = ["Hello <|im_end|> \n", "Fine <|im_end|> \n"]
PAD = VOCAB["<unk>"]  # the tokenizer has no pad token, so load_tokenizer picks its unknown token


@pytest.fixture
def rows_file(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"train_file": "missing.jsonl"}, r"data\.train_file: 'missing\.jsonl' does not exist"),
        ({"val_file": "data/missing.csv"}, r"data\.val_file: 'data/missing\.csv' does not exist"),
        ({"val_fraction": 1.0}, r"data\.val_fraction: 1\.0 is outside \[0, 1\)"),
        ({"val_fraction": 0.1, "val_file": "ROWS"}, r"data\.val_fraction: 0\.1 is set together with data\.val_file"),
        ({"max_length": 0}, r"data\.max_length: 0 is below 1"),
        ({"format": "vicuna"}, r"data\.format: unknown format 'vicuna'"),
        ({"template": "chatml"}, r"data\.template: unknown value 'chatml'"),
    ],
)
def test_bad_settings_fail_at_construction(rows_file: str, settings: dict, message: str) -> None:
    settings = {key: rows_file if value == "ROWS" else value for key, value in settings.items()}
    with pytest.raises(ConfigError, match=message):
        SFTDataModule(**{"train_file": rows_file, **settings})


def test_missing_tokenizer_points_at_the_model_setting(rows_file: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.tokenizer_name_or_path is not set.* set model\.model_name_or_path"):
        SFTDataModule(rows_file).setup("fit")


def test_setup_and_dataloaders_end_to_end(tmp_path: Path, rows_file: str, chat_path: str) -> None:
    val_file = write_jsonl(tmp_path / "val.jsonl", ROWS)
    data = SFTDataModule(
        rows_file, val_file=val_file, tokenizer_name_or_path=chat_path, batch_size=2, eval_batch_size=2
    )
    data.setup("fit")
    train = data.dataset("train")
    data.setup("fit")
    assert data.dataset("train") is train  # setup is idempotent
    assert data.tokenizer.pad_token_id == PAD

    batch = next(iter(data.train_dataloader()))
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert all(tensor.dtype == torch.long and tensor.shape == (2, 15) for tensor in batch.values())

    # EOS ends each response and stays trained, padding does not.
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].tolist() == [
        ids(f"{PROMPTS[0]} {RESPONSES[0]}") + [PAD, PAD],
        ids(f"{PROMPTS[1]} {RESPONSES[1]}"),
    ]
    assert batch["attention_mask"].tolist() == [[1] * 13 + [0, 0], [1] * 15]
    assert batch["labels"].tolist() == [
        masked(PROMPTS[0]) + ids(RESPONSES[0]) + [IGNORE, IGNORE],
        masked(PROMPTS[1]) + ids(RESPONSES[1]),
    ]

    # Test and predict data default to the validation data.
    data.setup("test")
    assert data.dataset("test") is data.dataset("validation")
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    assert batch["input_ids"].tolist() == [[PAD, PAD] + ids(PROMPTS[0]), ids(PROMPTS[1])]
    assert batch["attention_mask"].tolist() == [[0, 0] + [1] * 10, [1] * 12]
    assert batch["reference"] == ["Hello", "Fine"]


def test_prompt_examples_stop_before_the_last_assistant_turn(tmp_path: Path, plain_path: str) -> None:
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you"},
        {"role": "assistant", "content": "Fine thanks"},
    ]
    data = SFTDataModule(
        write_jsonl(tmp_path / "chats.jsonl", [{"messages": conversation}]), tokenizer_name_or_path=plain_path
    )
    prompt = (
        "<s> ### User : \n Hi \n \n ### Assistant : \n Hello </s> \n \n"
        " ### User : \n How are you \n \n ### Assistant : \n"
    )
    assert data.prompt_examples("train") == [PromptExample(ids(prompt), "Fine thanks")]


def test_examples_without_trained_tokens_are_dropped_and_counted(rows_file: str, chat_path: str) -> None:
    # 12 tokens hold all of the first example's prompt but none of the second's response.
    data = SFTDataModule(rows_file, tokenizer_name_or_path=chat_path, max_length=12)
    with pytest.warns(
        UserWarning, match=r"train split \(data\.train_file '.*train\.jsonl'\): dropped 1 of 2 .* data\.max_length=12"
    ):
        data.setup("fit")
    assert data.dropped == {"train": 1}
    assert data.dataset("train").to_list() == [
        {"input_ids": ids(f"{PROMPTS[0]} Hello <|im_end|>"), "labels": masked(PROMPTS[0]) + ids("Hello <|im_end|>")}
    ]
    batch = next(iter(data.train_dataloader()))
    assert (batch["labels"][:, 1:] != IGNORE).sum().item() == 2


def test_nothing_left_to_train_is_an_error(rows_file: str, chat_path: str) -> None:
    data = SFTDataModule(rows_file, tokenizer_name_or_path=chat_path, max_length=10)
    with pytest.raises(ConfigError, match=r"no train example has a trained token within data\.max_length=10"):
        data.setup("fit")


def test_nothing_left_to_validate_is_an_error(tmp_path: Path, rows_file: str, chat_path: str) -> None:
    # The training prompt fits in 12 tokens, the validation prompt does not.
    val = write_jsonl(tmp_path / "val.jsonl", ROWS[1:])
    data = SFTDataModule(rows_file, val_file=val, tokenizer_name_or_path=chat_path, max_length=12)
    with pytest.raises(ConfigError, match=r"data\.val_file '.*val\.jsonl': no validation example has a trained token"):
        data.setup("fit")


def test_val_fraction_split_is_seeded_and_disjoint(tmp_path: Path, plain_path: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": f"w{row}"} for row in range(10)])

    def references(seed: int) -> tuple[list[str], list[str]]:
        data = SFTDataModule(path, val_fraction=0.3, seed=seed, tokenizer_name_or_path=plain_path)
        data.setup("fit")
        return tuple(
            [example.reference for example in data.prompt_examples(split)] for split in ("train", "validation")
        )

    train, validation = references(seed=42)
    assert len(validation) == 3
    assert sorted(train + validation, key=lambda text: int(text[1:])) == [f"w{row}" for row in range(10)]
    assert references(seed=42) == (train, validation)
    assert references(seed=7)[1] != validation


def test_no_validation_data_gives_no_val_dataloader(rows_file: str, chat_path: str) -> None:
    data = SFTDataModule(rows_file, tokenizer_name_or_path=chat_path)
    data.setup("fit")
    assert data.val_dataloader() == []
    assert data.predict_dataloader() == []


def test_tokenization_is_cached_across_runs(tmp_path: Path, rows_file: str, chat_path: str) -> None:
    first = SFTDataModule(rows_file, tokenizer_name_or_path=chat_path)
    first.trainer = Trainer(
        logger=False, enable_progress_bar=False
    )  # as under Lightning: must not change the cache key
    first.setup("fit")
    # Batching settings do not change the examples, so they reuse the cache too.
    second = SFTDataModule(rows_file, tokenizer_name_or_path=chat_path, batch_size=8, seed=0)
    second.setup("fit")
    assert first.dataset("train").cache_files == second.dataset("train").cache_files


def test_tokenizing_in_two_processes(tmp_path: Path, chat_path: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS * 2)
    data = SFTDataModule(path, tokenizer_name_or_path=chat_path, num_proc=2)
    data.setup("fit")
    assert (
        data.dataset("train")["input_ids"][:]
        == [ids(f"{prompt} {response}") for prompt, response in zip(PROMPTS, RESPONSES, strict=True)] * 2
    )


class TinyLM(LightningModule):
    """Just enough of a causal LM to run real training and validation loops on the batches."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(VOCAB), 4)
        self.head = torch.nn.Linear(4, len(VOCAB))
        self.validation_batches = 0

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.head(self.embed(batch["input_ids"]))  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_batches += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("val_fraction", "validation_batches"), [(0.0, 0), (0.5, 1)])
def test_trainer_runs_with_and_without_validation(
    tmp_path: Path, chat_path: str, val_fraction: float, validation_batches: int
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS * 2)
    data = SFTDataModule(path, val_fraction=val_fraction, tokenizer_name_or_path=chat_path, batch_size=2)
    model = TinyLM()
    trainer = Trainer(
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == (2 if val_fraction == 0 else 1)
    assert model.validation_batches == validation_batches


def test_longest_batch_length_is_the_longest_example_read(rows_file: str, chat_path: str) -> None:
    def data(**settings) -> SFTDataModule:
        return SFTDataModule(rows_file, tokenizer_name_or_path=chat_path, **{"max_length": 64, **settings})

    unread = data()
    assert unread.longest_batch_length() == 64  # nothing read: the bound
    for settings, expected in (
        ({}, 15),  # 12 prompt + 3 response tokens of ROWS[1]
        ({"pad_to_multiple_of": 8}, 16),
        ({"max_length": 14}, 14),  # cut at max_length
        ({"packing": True}, 64),  # packs fill sequences up to max_length
    ):
        module = data(**settings)
        module.setup("fit")
        assert module.longest_batch_length() == expected, settings
