"""Training end to end on completions that look like dates: they are trained on exactly as the file writes them."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from lit_lora.data import SFTDataModule
from tests.helpers.tiny import run_tiny

REPO = Path(__file__).resolve().parents[2]

# Arrow's JSON reader would take every one of these for a timestamp.
DATES = ["1999-12-31", "2024-02-29T10:00:00", "2000-01-01 00:00:00", "1970-01-01T00:00:00Z"]


def write_rows(path: Path, offset: int) -> list[dict[str, str]]:
    rows = [
        {"prompt": f"Which date is number {offset + index}?", "completion": date} for index, date in enumerate(DATES)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


def test_date_completions_train_and_decode_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, val, cache = tmp_path / "train.jsonl", tmp_path / "val.jsonl", tmp_path / "hf_datasets"
    rows = write_rows(train, 0)
    write_rows(val, 100)
    done = run_tiny(
        "fit",
        tmp_path / "run",
        *("--data.train_file", str(train), "--data.val_file", str(val), "--data.batch_size", "2"),
        *("--trainer.max_steps", "2"),
        env={"HF_DATASETS_CACHE": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()

    # The same data module as the run's (the CLI takes the tokenizer from the model), on the run's cache.
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    written = {path.name for path in cache.rglob("*.arrow")}
    data = SFTDataModule(str(train), val_file=str(val), max_length=128, tokenizer_name_or_path="assets/tiny-llama")
    data.setup("fit")
    examples = data.dataset("train")
    # The examples read here are the ones the run tokenized and trained on: every file was already in the cache.
    assert {Path(entry["filename"]).name for entry in examples.cache_files} <= written
    assert len(examples) == len(rows)
    for row, example in zip(rows, examples, strict=True):
        trained = [token for token in example["labels"] if token != -100]
        assert data.tokenizer.decode(trained) == row["completion"] + "<|im_end|>\n"
