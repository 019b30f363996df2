"""Sequence classification: label mapping, the loss formula, training through the CLI, predict, bad labels."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_lora.cli import main
from lit_lora.data import ClassificationDataModule
from lit_lora.errors import ConfigError
from lit_lora.model.classification import ClassificationModule, read_adapter_labels

REPO = Path(__file__).resolve().parents[2]
WORDS = {"good": "positive", "bad": "negative", "okay": "neutral"}


def write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def rows(count: int, offset: int = 0) -> list[dict[str, str]]:
    """Texts whose label is given away by one word, so even a tiny model can learn it."""
    words = list(WORDS)
    return [
        {"text": f"review {i}: it was {words[i % 3]}", "label": WORDS[words[i % 3]]}
        for i in range(offset, offset + count)
    ]


def config(tmp_path: Path, **data: object) -> str:
    path = tmp_path / "classify.yaml"
    settings = {
        "train_file": write_csv(tmp_path / "train.csv", rows(24)),
        "val_file": write_csv(tmp_path / "val.csv", rows(6, offset=100)),
        "max_length": 32,
        "batch_size": 8,
        **data,
    }
    path.write_text(
        json.dumps(
            {
                "model": {"class_path": "lit_lora.ClassificationModule"},
                "data": {"class_path": "lit_lora.data.ClassificationDataModule", "init_args": settings},
                "trainer": {"max_epochs": 1, "accumulate_grad_batches": 1, "enable_progress_bar": False},
            }
        )
    )
    return str(path)


def test_labels_are_sorted_numbers_first_and_map_to_ids(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": v} for v in ("10", "b", "2", "a", "2")])
    data = ClassificationDataModule(train, tokenizer_name_or_path=str(REPO / "assets/tiny-llama"))
    data.setup("fit")
    assert data.label_names() == ["2", "10", "a", "b"]
    assert data.dataset("train")["label"] == [1, 3, 0, 2, 0]
    assert data.dataset("validation") is None


def test_balanced_class_weights_follow_the_counts(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": v} for v in ("x", "x", "x", "y")])
    data = ClassificationDataModule(
        train, class_weights="balanced", tokenizer_name_or_path=str(REPO / "assets/tiny-llama")
    )
    data.setup("fit")
    # rows / (classes x rows of the class): 4 / (2 x 3) and 4 / (2 x 1).
    assert data.loss_weights().tolist() == pytest.approx([4 / 6, 2.0])


def test_unknown_label_names_the_file_line_and_label(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(6))
    val = write_csv(tmp_path / "val.csv", [*rows(2), {"text": "it was fine", "label": "mixed"}])
    data = ClassificationDataModule(train, val_file=val, tokenizer_name_or_path=str(REPO / "assets/tiny-llama"))
    with pytest.raises(ConfigError, match=r"data.val_file '.*val.csv', .*line 4.*label 'mixed' is not one of"):
        data.setup("fit")


def test_missing_column_names_the_setting(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"sentence": "a", "label": "x"}])
    data = ClassificationDataModule(train, tokenizer_name_or_path=str(REPO / "assets/tiny-llama"))
    with pytest.raises(ConfigError, match=r"no column \['text'\].*data.text_field"):
        data.setup("fit")


def test_fit_trains_the_head_saves_labels_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    cli = main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--config",
            config(tmp_path, class_weights=[1.0, 2.0, 1.0]),
            "--trainer.default_root_dir",
            str(root),
        ]
    )
    module = cli.model
    assert isinstance(module, ClassificationModule)
    assert module.label_names == ["negative", "neutral", "positive"]
    # The head is trained in full, in float32, next to the LoRA weights; nothing else of the base is.
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    head = [name for name in trained if "score" in name]
    assert head and all("modules_to_save" in name for name in head)
    assert all("lora_" in name or "score" in name for name in trained)
    assert all(p.dtype == torch.float32 for name, p in module.named_parameters() if name in head)
    metrics = cli.trainer.callback_metrics
    for name in ("val/loss", "val/accuracy", "val/f1_macro", "val/f1/negative", "val/f1/neutral", "val/f1/positive"):
        assert name in metrics
    assert 0.0 <= float(metrics["val/accuracy"]) <= 1.0

    adapter = root / "adapter"
    assert read_adapter_labels(adapter) == ["negative", "neutral", "positive"]
    # A checkpoint carries its labels: loading it needs no data module.
    reloaded = ClassificationModule.load_from_checkpoint(root / "checkpoints" / "last.ckpt")
    assert reloaded.label_names == ["negative", "neutral", "positive"]
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS"

    # Predict from the adapter alone: no training file, labels from labels.json.
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"it was {w}"}) + "\n" for w in WORDS))
    main(
        [
            "predict",
            "--config",
            "configs/tiny.yaml",
            "--config",
            config(tmp_path),
            "--data.init_args.train_file",
            "null",
            "--data.init_args.val_file",
            "null",
            "--data.init_args.predict_file",
            str(texts),
            "--ckpt_path",
            str(adapter),
            "--trainer.default_root_dir",
            str(tmp_path / "predict"),
        ]
    )
    written = [json.loads(line) for line in (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert [row["text"] for row in written] == [f"it was {w}" for w in WORDS]
    for row in written:
        assert row["prediction"] in ("negative", "neutral", "positive")
        assert row["reference"] is None
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == max(row["probabilities"], key=row["probabilities"].get)


def test_loss_is_weighted_cross_entropy_summed_over_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--config",
            config(tmp_path, class_weights=[1.0, 3.0, 0.5]),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.max_steps",
            "1",
        ]
    )
    module = cli.model.eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        loss_sum, count = module.compute_loss(batch)
        logits = module.logits(batch)
    weights = torch.tensor([1.0, 3.0, 0.5])
    by_hand = sum(
        -weights[label] * F.log_softmax(row, dim=-1)[label] for row, label in zip(logits, batch["labels"].tolist())
    )
    assert count.item() == len(batch["labels"]) == 6
    assert loss_sum.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert module.chance_loss() == pytest.approx(math.log(3))
