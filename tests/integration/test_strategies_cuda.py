"""The GPU strategy configs on one CUDA device: fsdp_qlora.yaml, deepspeed_zero2.yaml, deepspeed_zero3.yaml.

Skipped without CUDA (CI has none); ``scripts/gpu_check.sh`` runs them. Each trains the
tiny config for a few steps with ``devices: 1`` and exports an adapter that
``PeftModel.from_pretrained`` loads onto the same 4-bit base; the FSDP2 checkpoint is a
single adapter-sized file that validates again on the same device.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from lit_lora.model.loading import load_base_model, random_weights_folder
from lit_lora.model.quantization import QuantizationSettings
from tests.helpers.tiny import TINY_MODEL, run_tiny

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ONE_GPU = ("--trainer.devices", "1", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2")


def fit_with(config: str, root) -> None:
    done = run_tiny("fit", root, "--config", f"configs/strategies/{config}.yaml", *ONE_GPU)
    assert done.returncode == 0, done.stderr[-4000:]


def assert_loads_as_peft_adapter(root, quant_storage: str) -> None:
    """The export loads onto the run's own base (4-bit, bf16 storage and compute) on the GPU."""
    quantization = QuantizationSettings(compute_dtype="bfloat16", quant_storage=quant_storage)
    base = load_base_model(str(random_weights_folder(str(TINY_MODEL), 0)), quantization, torch.device("cuda"))
    model = PeftModel.from_pretrained(base, root / "adapter")
    exported = load_file(root / "adapter" / "adapter_model.safetensors")
    assert exported and all(w.numel() > 0 for w in exported.values())
    assert sum(".lora_" in name for name, _ in model.named_parameters()) == len(exported)


def test_fsdp_qlora_on_one_gpu_trains_exports_and_validates_from_its_checkpoint(tmp_path):
    fit_with("fsdp_qlora", tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["state_dict"] and all(".lora_" in name for name in checkpoint["state_dict"])
    assert_loads_as_peft_adapter(tmp_path, "bfloat16")
    again = run_tiny(
        "validate",
        tmp_path / "validate",
        *("--config", "configs/strategies/fsdp_qlora.yaml", "--trainer.devices", "1"),
        *("--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")),
    )
    assert again.returncode == 0, again.stderr[-4000:]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs DeepSpeed (lit_lora[deepspeed])")
@pytest.mark.parametrize(("config", "quant_storage"), [("deepspeed_zero2", "uint8"), ("deepspeed_zero3", "bfloat16")])
def test_deepspeed_on_one_gpu_trains_and_exports(tmp_path, config, quant_storage):
    fit_with(config, tmp_path)
    # DeepSpeed's own checkpoint folder, without the frozen base.
    assert (tmp_path / "checkpoints" / "last.ckpt").is_dir()
    assert_loads_as_peft_adapter(tmp_path, quant_storage)
