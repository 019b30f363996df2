"""The docs' subclassing example (docs/examples/weighted_examples.py), chosen with class_path, trained end to end."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_lora.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs/examples/weighted_examples.py"


@pytest.fixture
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    yield
    sys.modules.pop("weighted_examples", None)


def test_the_docs_page_shows_the_tested_file_verbatim():
    page = (REPO / "docs/extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    assert EXAMPLE.read_text() in blocks
    assert len(EXAMPLE.read_text().splitlines()) < 50


def test_weighted_subclasses_train_through_the_cli(tmp_path, monkeypatch, example_on_path):
    monkeypatch.chdir(REPO)
    data = tmp_path / "weighted.jsonl"
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"{i + 1}", "weight": float(i % 3)} for i in range(32)]
    rows[0].pop("weight")  # a row without a weight counts once
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "custom.yaml"
    config.write_text(f"""
model:
  class_path: weighted_examples.WeightedLoRAModule
  init_args:
    max_weight: 1.5
data:
  class_path: weighted_examples.WeightedSFTDataModule
  init_args:
    train_file: {data}
    batch_size: 8
""")
    cli = main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--config",
            str(config),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.max_epochs",
            "1",
            "--data.val_file",
            "null",
            "--data.val_fraction",
            "0.25",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    module, datamodule = cli.model, cli.datamodule
    assert type(module).__name__ == "WeightedLoRAModule" and module.max_weight == 1.5
    assert cli.trainer.global_step == 2  # 24 training rows: 3 batches of 8, accumulated by 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()

    # The weights reach the loss: the weighted token sum, clipped at max_weight.
    batch = next(iter(datamodule.val_dataloader()))
    weights = batch["weight"]
    assert set(weights.tolist()) <= {0.0, 1.0, 2.0} and 2.0 in weights
    module.eval()  # no dropout: both passes see the same model
    with torch.no_grad():
        loss_sum, count = module.compute_loss(batch)
        logits = module(batch["input_ids"], batch["attention_mask"])[:, :-1].float()
    targets = batch["labels"][:, 1:]
    per_row = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(dim=1)
    assert loss_sum.item() == pytest.approx((per_row * weights.clamp(max=1.5)).sum().item(), rel=1e-5)
    assert count.item() == (targets != -100).sum().item()
