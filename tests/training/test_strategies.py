"""Strategy support: what each configured strategy is, and the combinations refused before loading.

Every refusal is checked on the parsed config, as ``fit`` meets it, and one through
the command line to show it ends with the message alone, before anything is built.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lit_lora.cli import main
from lit_lora.errors import ConfigError
from lit_lora.training.sharded_base import ShardedBaseStrategy
from lit_lora.training.strategies import check_strategy, deepspeed_installed, device_count, strategy_kind
from tests.helpers.parsing import parse
from tests.helpers.tiny import REPO

SHARDED = "lit_lora.training.sharded_base.ShardedBaseStrategy"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def checked(*extra: str) -> None:
    """Parse configs/tiny.yaml with ``extra`` and run the strategy check on it."""
    config = parse(["fit", "--config", "configs/tiny.yaml", *extra]).fit
    return check_strategy(config.trainer, config.model.init_args.as_dict(), config.data.init_args.as_dict())


@pytest.mark.parametrize(
    ("strategy", "family", "shards_weights", "shards_optimizer"),
    [
        ("auto", "other", False, False),
        ("ddp", "other", False, False),
        ("fsdp", "fsdp", True, True),
        ("deepspeed", "deepspeed", False, True),
        ("deepspeed_stage_3_offload", "deepspeed", True, True),
        ({"class_path": SHARDED}, "fsdp2", True, False),
        (
            {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy", "init_args": {"stage": 3}},
            "deepspeed",
            True,
            True,
        ),
        (SHARDED, "fsdp2", True, False),
        (DDPStrategy(), "other", False, False),
        (ShardedBaseStrategy(), "fsdp2", True, False),
    ],
)
def test_strategy_kind_from_a_name_a_class_path_or_an_object(strategy, family, shards_weights, shards_optimizer):
    kind = strategy_kind(strategy)
    assert (kind.family, kind.shards_weights, kind.shards_optimizer) == (family, shards_weights, shards_optimizer)


def test_an_unknown_strategy_name_is_refused_with_the_names_and_the_sharded_configs():
    with pytest.raises(ConfigError, match=r"trainer.strategy: 'fdsp' is not a strategy name \(ddp, .*fsdp2.yaml"):
        strategy_kind("fdsp")


@pytest.mark.parametrize(
    ("devices", "num_nodes", "count"), [(2, 1, 2), ("3", 2, 6), ([0, 1], 1, 2), ("0,1,2", 1, 3), ("auto", 1, 1)]
)
def test_device_count_is_devices_times_nodes(devices, num_nodes, count):
    assert device_count({"devices": devices, "num_nodes": num_nodes}, cuda=False) == count


def test_lightning_fsdp_on_cpu_points_at_the_cpu_sharded_path():
    with pytest.raises(ConfigError, match=r"trainer.strategy: fsdp runs on CUDA GPUs only.*fsdp2.yaml.*ddp.yaml"):
        checked("--trainer.strategy", "fsdp")


def test_lightning_fsdp_on_gpus_points_at_fsdp_qlora():
    with pytest.raises(ConfigError, match=r"\(FSDP1\) is not lit_lora's sharded path.*fsdp_qlora.yaml"):
        checked("--trainer.strategy", "fsdp", "--trainer.accelerator", "gpu")


@pytest.mark.parametrize("strategy", ["deepspeed", "deepspeed_stage_3"])
def test_deepspeed_on_cpu_points_at_the_cpu_sharded_path(strategy):
    with pytest.raises(ConfigError, match=rf"trainer.strategy: {strategy} runs on CUDA GPUs only.*fsdp2.yaml"):
        checked("--trainer.strategy", strategy)


@pytest.mark.skipif(deepspeed_installed(), reason="DeepSpeed is installed")
def test_deepspeed_not_installed_names_the_extra():
    with pytest.raises(
        ConfigError, match=r"needs DeepSpeed, which is not installed: pip install 'lit_lora\[deepspeed\]'"
    ):
        checked("--config", "configs/strategies/deepspeed_zero2.yaml")


def test_plain_model_parallel_would_train_each_device_alone():
    with pytest.raises(ConfigError, match="every device would train on its own.*fsdp2.yaml"):
        checked("--trainer.strategy", "lightning.pytorch.strategies.ModelParallelStrategy")


@pytest.mark.parametrize("config", ["configs/strategies/fsdp2.yaml", "configs/strategies/fsdp_qlora.yaml"])
def test_an_8bit_base_cannot_be_sharded(config):
    with pytest.raises(ConfigError, match="model.quantization.mode: int8 cannot be sharded by ShardedBaseStrategy"):
        checked("--config", config, "--model.quantization.mode", "int8")


def test_fsdp2_shards_4bit_weights_of_any_storage():
    # Measured in tests/training/test_sharded_base.py: uint8 storage shards exactly too.
    assert checked("--config", "configs/strategies/fsdp2.yaml").family == "fsdp2"
    assert checked("--config", "configs/strategies/fsdp_qlora.yaml").family == "fsdp2"


def deepspeed_checked(monkeypatch, *extra: str) -> None:
    """The DeepSpeed checks past the installation check (DeepSpeed is not installed here)."""
    import lit_lora.training.strategies as strategies

    monkeypatch.setattr(strategies, "deepspeed_installed", lambda: True)
    return checked("--config", "configs/strategies/deepspeed_zero3.yaml", *extra)


def test_zero3_needs_4bit_storage_in_the_compute_dtype(monkeypatch):
    with pytest.raises(ConfigError, match="quant_storage: uint8 differs from the compute dtype bfloat16.*fsdp2.yaml"):
        deepspeed_checked(monkeypatch, "--model.quantization.quant_storage", "uint8")
    assert deepspeed_checked(monkeypatch).family == "deepspeed"


@pytest.mark.parametrize(
    ("optimizer", "named"),
    [
        ("bitsandbytes.optim.PagedAdamW8bit", "bitsandbytes.optim.PagedAdamW8bit"),
        ("bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.AdamW8bit"),
        ("null", r"bitsandbytes.optim.PagedAdamW8bit \(the default\)"),
    ],
)
def test_deepspeed_refuses_optimizers_whose_state_it_cannot_save(monkeypatch, optimizer, named):
    with pytest.raises(ConfigError, match=rf"model.optimizer: {named} keeps quantized, paged state.*torch.optim.AdamW"):
        deepspeed_checked(monkeypatch, "--model.optimizer", optimizer)


def test_a_refusal_ends_fit_with_the_message_before_anything_is_built(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "fit",
                "--config",
                "configs/tiny.yaml",
                "--trainer.strategy",
                "fsdp",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
    assert stopped.value.code == 2
    assert "lit_lora: error: trainer.strategy: fsdp runs on CUDA GPUs only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cuda_is_what_gpu_and_cuda_name():
    from lit_lora.training.strategies import runs_on_cuda

    assert runs_on_cuda("gpu") and runs_on_cuda("cuda") and not runs_on_cuda("cpu")
    assert runs_on_cuda("auto") == torch.cuda.is_available()


def test_deepspeed_needs_one_micro_batch_per_step(monkeypatch):
    with pytest.raises(
        ConfigError,
        match="trainer.accumulate_grad_batches: 4 under DeepSpeedStrategy.*Set trainer.accumulate_grad_batches: 1",
    ):
        deepspeed_checked(monkeypatch, "--trainer.accumulate_grad_batches", "4")
    with pytest.raises(ConfigError, match="data.batch_size: auto chooses a gradient accumulation"):
        deepspeed_checked(monkeypatch, "--data.batch_size", "auto")
