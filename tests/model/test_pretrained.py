"""Base + adapters as trained: the spec resolution, the device rule, and ``--ckpt_path <adapter folder>``."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from lit_lora.artifacts.adapter_dir import BaseModelSpec
from lit_lora.cli import main
from lit_lora.errors import ConfigError
from lit_lora.model.pretrained import check_configured_base, resolve_device, resolve_trained_model
from lit_lora.model.quantization import QuantizationSettings
from tests.helpers.tiny import REPO, TINY_MODEL, tiny_args


def trained_init_args(adapter) -> dict:
    """The ``model.init_args`` the adapter's training config records."""
    return yaml.safe_load((adapter / "training_config.yaml").read_text())["model"]["init_args"]


def test_quantized_as_trained_or_unquantized_at_the_trained_compute_dtype(tiny_adapters, tmp_path):
    adapter = shutil.copytree(tiny_adapters[0], tmp_path / "bf16")
    config = yaml.safe_load((adapter / "training_config.yaml").read_text())
    config["model"]["init_args"]["quantization"]["compute_dtype"] = "bfloat16"
    (adapter / "training_config.yaml").write_text(yaml.safe_dump(config))

    as_trained = resolve_trained_model([adapter])
    assert as_trained.spec.quantization == QuantizationSettings(mode="nf4", compute_dtype="bfloat16")
    unquantized = resolve_trained_model([adapter], quantized=False)
    assert unquantized.spec.quantization == QuantizationSettings(mode="none", compute_dtype="bfloat16")
    assert resolve_trained_model([adapter], quantized=False, compute_dtype="float32").spec.quantization == (
        QuantizationSettings(mode="none", compute_dtype="float32")
    )
    # The base alone (evaluate without --adapter) is never quantized.
    alone = resolve_trained_model([], base=str(TINY_MODEL))
    assert not alone.spec.quantization.quantized and alone.tokenizer_source() == (str(TINY_MODEL), None)


def test_device_rule_explicit_else_cuda_when_available_else_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device: 'gpu0' is no device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="has no CUDA device"):
            resolve_device("cuda")


def test_a_run_configuring_the_trained_base_passes_however_it_spells_the_folder(tiny_adapters, monkeypatch):
    adapter = tiny_adapters[0]
    args = trained_init_args(adapter)
    check_configured_base(adapter, args)
    monkeypatch.chdir(REPO)
    check_configured_base(adapter, {**args, "model_name_or_path": str(TINY_MODEL.relative_to(REPO))})


def test_an_adapter_from_elsewhere_records_no_base_to_check(tiny_adapters, tmp_path):
    adapter = tmp_path / "peft-only"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tiny_adapters[0] / name, adapter / name)
    check_configured_base(adapter, {"model_name_or_path": "elsewhere", "quantization": {"mode": "int8"}})


def test_validate_refuses_an_adapter_folder_trained_on_another_base_with_both_values_and_the_fix(
    tiny_adapters, tmp_path, monkeypatch, capsys
):
    # configs/tiny.yaml computes in float32; the tiny adapters trained with compute_dtype auto.
    monkeypatch.chdir(REPO)
    adapter = tiny_adapters[0]
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args("validate", tmp_path, "--ckpt_path", str(adapter)))

    assert exit_info.value.code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"ckpt_path: the adapter in '{adapter}' was trained on another base" in error
    assert "model.init_args.quantization.compute_dtype is auto there, float32 here" in error
    assert f"--config {adapter / 'training_config.yaml'}" in error
    assert "--model.init_args.quantization.compute_dtype auto" in error
    assert BaseModelSpec.of_adapter(adapter).quantization.compute_dtype == "auto"
