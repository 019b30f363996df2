"""The README's subclassing example, selected with class_path and trained end to end."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from lit_lora import LoRAModule
from lit_lora.cli import main
from lit_lora.data import SFTDataModule

REPO = Path(__file__).resolve().parents[1]


class LabelSmoothingModule(LoRAModule):
    """Cross-entropy with label smoothing.

    Args:
        smoothing: Probability mass spread over the whole vocabulary.
    """

    def __init__(self, *args, smoothing: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.smoothing = smoothing

    def compute_loss(self, batch):
        logits = self(batch["input_ids"], batch["attention_mask"])[:, :-1]
        targets = batch["labels"][:, 1:]
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(),
            ignore_index=-100, reduction="sum", label_smoothing=self.smoothing,
        )
        return loss_sum, (targets != -100).sum()


class QADataModule(SFTDataModule):
    """Adds a `question`/`answer` format."""

    format_columns = {**SFTDataModule.format_columns, "qa": ("question", "answer")}

    def to_conversation(self, row, format):
        if format == "qa":
            return [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["answer"]},
            ]
        return super().to_conversation(row, format)


def test_subclasses_selected_by_class_path_train(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(f'{{"question": "What is {i} + 1?", "answer": "{i + 1}"}}\n' for i in range(32)))
    config = tmp_path / "custom.yaml"
    config.write_text(f"""
model:
  class_path: {__name__}.LabelSmoothingModule
  init_args:
    smoothing: 0.2
data:
  class_path: {__name__}.QADataModule
  init_args:
    train_file: {data}
""")
    cli = main([
        "fit", "--config", "configs/tiny.yaml", "--config", str(config),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1",
        "--data.val_file", "null", "--data.val_fraction", "0.25", "--trainer.enable_progress_bar", "false",
    ])
    assert isinstance(cli.model, LabelSmoothingModule) and cli.model.smoothing == 0.2
    assert isinstance(cli.datamodule, QADataModule)
    assert cli.model.model_name_or_path == "assets/tiny-llama"  # the rest of tiny.yaml still applies
    assert cli.trainer.global_step == 1  # 24 training rows: 2 batches of 16, accumulated into 1 step
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
