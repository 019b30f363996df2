"""QLoRA on a CUDA device: 4-bit base on the GPU, bf16 autocast, paged 8-bit AdamW.

Skipped on machines without CUDA (CI has none).
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel

from lit_lora.cli import main
from lit_lora.model.loading import load_base_model, random_weights_folder

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_qlora_fit_on_cuda_in_bf16(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--trainer.accelerator",
            "gpu",
            "--trainer.precision",
            "bf16-mixed",
            "--model.quantization.compute_dtype",
            "bfloat16",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    module = cli.model
    layer = module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.device.type == "cuda"
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])

    base = load_base_model(
        str(random_weights_folder(module.model_name_or_path, module.seed)), module.quantization, torch.device("cuda")
    )
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    ids, mask = batch["input_ids"].cuda(), batch["attention_mask"].cuda()
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids, attention_mask=mask).logits, module(ids, mask), rtol=2e-2, atol=2e-2
        )
