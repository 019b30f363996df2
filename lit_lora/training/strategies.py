"""What lit_lora needs from Lightning's strategies: their kind, the combinations refused, gathering.

Combinations that cannot work are refused from the config, before anything loads.
Lightning would stop some of them itself, but only after the model is built and with
a traceback (FSDP on CPU, DeepSpeed not installed); others would run and go wrong
later (an 8-bit base sharded apart, a paged optimizer whose state cannot be saved).
The sharded path itself is :mod:`lit_lora.training.sharded_base`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lit_lora.errors import ConfigError

SHARDED_PATHS = (
    "configs/strategies/fsdp2.yaml (FSDP2, runs on CPU and GPUs) "
    "or configs/strategies/ddp.yaml (a whole copy per device)"
)


@dataclass(frozen=True)
class StrategyKind:
    """What lit_lora needs to know about a configured strategy.

    Args:
        name: How the config names it (registry name or class name).
        family: ``fsdp`` (Lightning's FSDPStrategy), ``deepspeed``, ``fsdp2``
            (lit_lora's ShardedBaseStrategy), ``model_parallel`` (Lightning's, without
            lit_lora's sharding), or ``other`` (DDP, single device...).
        shards_weights: Whether the frozen base weights are split over the devices.
        shards_optimizer: Whether the optimizer state is split over the devices.
    """

    name: str
    family: str
    shards_weights: bool
    shards_optimizer: bool


def strategy_kind(strategy: Any) -> StrategyKind:
    """Classify ``trainer.strategy`` as the config holds it: a name, ``class_path``/``init_args``, or an object."""
    from lightning.pytorch.strategies import (
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
        Strategy,
        StrategyRegistry,
    )

    from lit_lora.training.sharded_base import ShardedBaseStrategy

    if strategy == "auto" or strategy is None:
        return StrategyKind("auto", "other", False, False)
    if isinstance(strategy, str) and "." in strategy:
        # A class path given on the command line without init_args.
        strategy = {"class_path": strategy}
    if isinstance(strategy, str):
        if strategy not in StrategyRegistry:
            raise ConfigError(
                f"trainer.strategy: '{strategy}' is not a strategy name ({', '.join(sorted(StrategyRegistry))}); "
                f"for sharded training use {SHARDED_PATHS}."
            )
        # The registry's get() would build the strategy; only its class and arguments are wanted.
        entry = dict.__getitem__(StrategyRegistry, strategy)
        cls, init_args, name = entry["strategy"], entry["init_params"], strategy
    elif isinstance(strategy, Strategy):
        cls, name = type(strategy), type(strategy).__name__
        init_args = {"stage": _deepspeed_stage(strategy)} if isinstance(strategy, DeepSpeedStrategy) else {}
    elif "class_path" in strategy:
        module, _, name = strategy["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        init_args = strategy.get("init_args") or {}
        init_args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
    else:
        return StrategyKind(str(strategy), "other", False, False)
    if issubclass(cls, ShardedBaseStrategy):
        return StrategyKind(name, "fsdp2", True, False)
    if issubclass(cls, ModelParallelStrategy):
        return StrategyKind(name, "model_parallel", False, False)
    if issubclass(cls, FSDPStrategy):
        return StrategyKind(name, "fsdp", True, True)
    if issubclass(cls, DeepSpeedStrategy):
        stage = init_args.get("stage", 2)
        return StrategyKind(name, "deepspeed", stage == 3, stage >= 1)
    return StrategyKind(name, "other", False, False)


def _deepspeed_stage(strategy: Any) -> int:
    return int(((strategy.config or {}).get("zero_optimization") or {}).get("stage", 2))


def runs_on_cuda(accelerator: Any) -> bool:
    """Whether ``trainer.accelerator`` puts the run on CUDA GPUs (``auto`` does when one is present)."""
    import torch

    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in ("gpu", "cuda") or name.startswith("cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()


def device_count(trainer: Any, cuda: bool) -> int:
    """The processes a run with these ``trainer`` settings starts: ``devices`` x ``num_nodes``."""
    import torch

    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and devices != "auto":
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    if devices == "auto" or devices == -1:
        devices = torch.cuda.device_count() if cuda else 1
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return count * int(trainer.get("num_nodes", 1) or 1)


def deepspeed_installed() -> bool:
    """Whether DeepSpeed can be imported (found without importing it: that takes seconds)."""
    return importlib.util.find_spec("deepspeed") is not None


def check_strategy(trainer: Any, model: dict[str, Any], data: dict[str, Any] | None = None) -> StrategyKind:
    """Refuse a strategy that cannot run this model, with the fix, before anything is built.

    Args:
        trainer: The ``trainer`` section of the parsed config (``strategy``, ``accelerator``).
        model: The model's ``init_args`` as a dict (``quantization``, ``optimizer``).
        data: The data module's ``init_args`` as a dict (``batch_size``), when known.

    Returns:
        The strategy's kind, for callers that size memory by it.

    Raises:
        ConfigError: Naming the setting, why it cannot work, and what to use instead.
    """
    kind = strategy_kind(trainer.get("strategy"))
    field = f"trainer.strategy: {kind.name}"
    if kind.family == "model_parallel":
        raise ConfigError(
            f"{field} leaves the model as lit_lora builds it, unsharded and with no gradient averaging: "
            f"every device would train on its own. Use {SHARDED_PATHS}."
        )
    on_cuda = runs_on_cuda(trainer.get("accelerator", "auto"))
    if kind.family == "fsdp":
        # One FSDP path, the tested one: Lightning's FSDPStrategy (FSDP1) refuses CPU, needs
        # a 4-bit base stored in the compute dtype, gathers the whole base to rank 0 for
        # every checkpoint, and cannot save bitsandbytes' optimizer state.
        where = "(FSDP1) is not lit_lora's sharded path" if on_cuda else "runs on CUDA GPUs only"
        raise ConfigError(
            f"{field} {where}: use configs/strategies/fsdp_qlora.yaml on GPUs, or {SHARDED_PATHS}; both shard "
            "the frozen base per decoder layer and keep checkpoints adapter-sized."
        )
    if kind.family == "deepspeed" and not on_cuda:
        raise ConfigError(f"{field} runs on CUDA GPUs only. On CPU, use {SHARDED_PATHS}.")
    if kind.family == "deepspeed" and not deepspeed_installed():
        raise ConfigError(f"{field} needs DeepSpeed, which is not installed: pip install 'lit_lora[deepspeed]'.")
    quantization = model.get("quantization") or {}
    mode = _setting(quantization, "mode", "nf4")
    if kind.shards_weights and mode == "int8":
        raise ConfigError(
            f"model.quantization.mode: int8 cannot be sharded by {kind.name}: an 8-bit weight's scales live "
            "outside the weight, and a shard would be read with another shard's. Use mode nf4 (QLoRA) or none."
        )
    if kind.family == "deepspeed":
        _check_uniform_storage(kind, quantization, mode)
        _check_checkpointable_optimizer(kind, model.get("optimizer"))
        _check_one_micro_batch_per_step(kind, trainer, data or {})
    return kind


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = settings.get(name, default) if isinstance(settings, dict) else getattr(settings, name, default)
    return default if value is None else value


def _check_uniform_storage(kind: StrategyKind, quantization: Any, mode: str) -> None:
    """ZeRO-3 partitions every weight as one dtype: 4-bit storage must be the compute dtype."""
    from lit_lora.model.quantization import resolve_dtype

    if mode not in ("nf4", "fp4") or not kind.shards_weights:
        return
    storage = _setting(quantization, "quant_storage", "uint8")
    compute = str(resolve_dtype(_setting(quantization, "compute_dtype", "auto"))).removeprefix("torch.")
    if storage != compute:
        raise ConfigError(
            f"model.quantization.quant_storage: {storage} differs from the compute dtype {compute}, and "
            f"{kind.name} partitions the weights as one dtype. Set "
            f"model.quantization.quant_storage: {compute} (as configs/strategies/fsdp_qlora.yaml does), or use "
            "configs/strategies/fsdp2.yaml, which shards 4-bit weights of any storage."
        )


def _check_one_micro_batch_per_step(kind: StrategyKind, trainer: Any, data: dict[str, Any]) -> None:
    """Under DeepSpeed the loss is normalised per micro-batch: exact only with one per optimizer step.

    lit_lora's loss is the mean over all the supervised tokens of an optimizer step.
    DeepSpeed keeps the gradients where they cannot be rescaled once the step's total
    is known, so each micro-batch is normalised by its own tokens over all devices
    (``lit_lora.training.step_loss``), which weighs a token of a short micro-batch more
    under gradient accumulation.
    """
    accumulation = trainer.get("accumulate_grad_batches", 1)
    if accumulation != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches: {accumulation} under {kind.name}: lit_lora's loss is the mean over "
            "an optimizer step's tokens, which DeepSpeed's gradient partitions let it compute only for one "
            "micro-batch per step. Set trainer.accumulate_grad_batches: 1 (as the DeepSpeed configs do) and "
            "raise data.batch_size or the devices, or use configs/strategies/fsdp_qlora.yaml."
        )
    if data.get("batch_size") == "auto":
        raise ConfigError(
            f"data.batch_size: auto chooses a gradient accumulation, which {kind.name} cannot normalise exactly; "
            "set data.batch_size to a number."
        )


def _check_checkpointable_optimizer(kind: StrategyKind, optimizer: Any) -> None:
    """bitsandbytes' 8-bit and paged optimizers keep state that DeepSpeed cannot partition or save."""
    class_path = optimizer.get("class_path", "") if isinstance(optimizer, dict) else ""
    if optimizer is None:
        class_path = "bitsandbytes.optim.PagedAdamW8bit (the default)"
    if "bitsandbytes" in class_path or "8bit" in class_path.lower() or "Paged" in class_path:
        raise ConfigError(
            f"model.optimizer: {class_path} keeps quantized, paged state that {kind.name} cannot shard into its "
            "checkpoints. Set model.optimizer.class_path: torch.optim.AdamW, or use configs/strategies/fsdp2.yaml, "
            "whose checkpoints hold any optimizer's state."
        )


@contextmanager
def whole_trainable_weights(strategy: Any, module: torch.nn.Module) -> Iterator[None]:
    """Within the block, every device holds each trainable weight whole (to export the adapter).

    Only DeepSpeed ZeRO-3 splits them; the sharded base of
    :class:`~lit_lora.training.sharded_base.ShardedBaseStrategy` keeps the adapter whole.
    Every process must enter the block: gathering is collective.
    """
    if strategy_kind(strategy).family == "deepspeed" and strategy_kind(strategy).shards_weights:
        import deepspeed

        from lit_lora.training.sharded_base import trainable_parameters

        with deepspeed.zero.GatheredParameters(trainable_parameters(module), modifier_rank=None):
            yield
    else:
        yield
