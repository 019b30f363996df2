"""``python -m lit_lora estimate``: the peak memory of a ``fit`` config, before anything is loaded.

Takes the same command line as ``fit`` (``--config``, any ``--model.*``, ``--data.*``,
``--trainer.*`` override) and prints the memory estimate of ``lit_lora.training.memory`` per
component, the memory the device has free, and whether the run fits. Only the
model's config is read (``config.json``, or the GGUF file's metadata): the model is
built on the meta device to count its parameters and find its linear layers, and
no weight is read. The data is read and tokenized as ``fit`` does (and cached
alike, so ``fit`` then finds it done) to find the longest batch.

On CPU the total is the peak RSS of the whole ``fit`` process: the Python process
with its libraries, loading the base (weight files and a converted copy, see
``lit_lora.training.memory.loading_bytes``), and training. On a GPU it is the device memory
the run needs, CUDA context included.

Activations and logits are taken at the longest batch: batches are padded to their
longest example, so the peak comes with the batch that holds the longest example
read (``data.max_length`` with packing). A GGUF model's first ``fit`` also converts it
once into the cache (``lit_lora.artifacts.source``), which is not estimated: the estimate is
of every run after that one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser

from lit_lora.artifacts.adapter_dir import check_adapter_dir
from lit_lora.artifacts.location import loadable
from lit_lora.artifacts.source import check_base_settings
from lit_lora.cli import ConfigOnlyCLI, build_cli
from lit_lora.data.base import DataModuleContract
from lit_lora.errors import ConfigError
from lit_lora.model.attention import attention_for_length
from lit_lora.model.lora import LoRASettings
from lit_lora.model.quantization import QuantizationSettings
from lit_lora.model.replay import allows_selective
from lit_lora.training.heap import launched_tuned
from lit_lora.training.memory import (
    MemoryEstimate,
    available_memory,
    estimate_memory,
    loading_bytes,
    materialises_attention,
    weight_file_bytes,
)
from lit_lora.training.planning import (
    CPU_MAX_GROWTH,
    SAFETY_FRACTION,
    checkpointing_modes,
    memory_verdict,
    plan_batch,
)
from lit_lora.training.shape import ModelShape, configured_optimizer_state_bytes, meta_model
from lit_lora.training.strategies import device_count, runs_on_cuda, strategy_kind

# GGUF models are dequantized into a float32 cache folder, and random_init writes
# ``from_config``'s float32 weights: what loading then reads, per parameter.
_CACHED_WEIGHT_BYTES = 4


@dataclass(frozen=True)
class PeakEstimate:
    """A ``fit`` config's predicted peak memory and the device it must fit on.

    Args:
        memory: The estimate per component.
        available: Bytes free on the device now (available RAM, or free CUDA memory).
        device: ``cpu`` or ``cuda``.
        batch_size: The micro-batch estimated (``batch_size: auto`` resolved).
        length: Tokens per sequence estimated: those of the longest batch.
        max_length: ``data.max_length``.
    """

    memory: MemoryEstimate
    available: int
    device: str
    batch_size: int
    length: int
    max_length: int

    @property
    def total_bytes(self) -> int:
        """The predicted peak, in bytes."""
        return self.memory.total

    @property
    def fits(self) -> bool:
        """Whether the peak is within the share of the available memory a run may take."""
        return memory_verdict(self.total_bytes, self.available, "at its peak it needs about")[0]

    def table(self) -> str:
        """The components, the total, the device's free memory, and the verdict."""
        verdict = memory_verdict(self.total_bytes, self.available, "at its peak it needs about")[1]
        return (
            f"estimated peak memory at batch_size {self.batch_size} x sequence length {self.length} (the "
            f"longest batch; data.max_length {self.max_length}) on "
            f"{self.device}:\n{self.memory.table()}\n"
            f"  {'available':<13}{self.available / 2**20:>12,.1f} MiB\n{verdict}"
        )


class EstimateCLI(ConfigOnlyCLI):
    """``fit``'s command line, parsed with ``fit``'s defaults and links; nothing is instantiated."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        description = "Predict the peak memory of a fit config before loading anything, and whether it fits."
        return super().init_parser(prog="python -m lit_lora estimate", description=description, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # The arguments are the program's (less ``estimate``), not LightningCLI's extra ones.
        self.config = parser.parse_args(args)


def base_config(model: Namespace) -> Any:
    """The base model's config from the ``model`` settings, failing on a bad path before any work.

    Args:
        model: ``model.init_args`` of a parsed ``fit`` config.

    Raises:
        ConfigError: The folder or GGUF file is missing, a folder has no
            ``config.json``, or ``adapter_path`` holds no adapter.
    """
    from transformers import AutoConfig

    # The checks LoRAModule makes, with the same messages.
    check_base_settings(model.model_name_or_path, model.gguf_file, model.tokenizer_name_or_path, model.random_init)
    if model.adapter_path is not None:
        check_adapter_dir(model.adapter_path, "model.adapter_path")
    folder = Path(loadable(model.model_name_or_path))
    if model.gguf_file is not None:
        # The GGUF metadata, without reading its tensors.
        return AutoConfig.from_pretrained(str(folder), gguf_file=model.gguf_file)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.model_name_or_path: '{folder}' has no config.json. Point it at a Hugging Face model "
            "folder (config.json and weights), or at the folder of a .gguf file plus gguf_file."
        )
    try:
        return AutoConfig.from_pretrained(str(folder))
    except OSError as error:  # a hub id that is not there, or no network
        raise ConfigError(
            f"model.model_name_or_path: no config.json for '{model.model_name_or_path}' ({error})"
        ) from error


def source_bytes(model: Namespace, config: Any, total_params: int) -> int:
    """Bytes of the weight files ``fit`` will load the base from.

    Args:
        model: ``model.init_args`` of a parsed ``fit`` config.
        config: The base model's config.
        total_params: Its parameters.
    """
    if model.gguf_file is not None or model.random_init:
        return total_params * _CACHED_WEIGHT_BYTES
    folder = Path(loadable(model.model_name_or_path))
    if folder.is_dir():
        return weight_file_bytes(folder)
    # A hub id: the checkpoint's dtype, as published.
    dtype = getattr(config, "dtype", None) or torch.float32
    return total_params * (getattr(torch, dtype) if isinstance(dtype, str) else dtype).itemsize


def adapter_config(model: Namespace) -> Any:
    """The PEFT config of the adapter ``fit`` trains: ``adapter_path``'s, else ``model.lora``'s.

    Args:
        model: ``model.init_args`` of a parsed ``fit`` config.
    """
    if model.adapter_path is not None:
        from peft import PeftConfig

        return PeftConfig.from_pretrained(model.adapter_path)
    return LoRASettings(**vars(model.lora)).to_peft_config()


def predict_peak(args: Sequence[str]) -> PeakEstimate:
    """Predict the peak memory of ``fit`` with the command line ``args``, without loading the model.

    Args:
        args: A ``fit`` command line (``--config`` and overrides), without ``fit``.

    Raises:
        ConfigError: A setting is wrong (a missing model folder or GGUF file...).
    """
    config = build_cli(list(args), run=False, cli_class=EstimateCLI).config
    model, data = config.model.init_args, config.data.init_args
    quantization = QuantizationSettings(**vars(model.quantization))
    peft_model = meta_model(base_config(model), quantization, adapter_config(model))
    shape = ModelShape.from_model(peft_model)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = model.optimizer
    optimizer_bytes = configured_optimizer_state_bytes(
        optimizer.class_path if optimizer else None,
        vars(optimizer.init_args) if optimizer else {},
        trainable,
    )
    total_params = shape.quantizable_params + shape.other_params
    loading = loading_bytes(source_bytes(model, peft_model.config, total_params), total_params, quantization)
    # The data last: its tokenizer comes from the model source checked above.
    length, sequences = longest_batch(config.data)
    cuda = runs_on_cuda(config.trainer.accelerator)
    shards = device_count(config.trainer, cuda)
    kind = strategy_kind(config.trainer.strategy)
    available = available_memory(torch.device("cuda" if cuda else "cpu"))

    def estimate(batch_size: int, checkpointing: bool | str, checkpointed_layers: int | None = None) -> MemoryEstimate:
        return estimate_memory(
            shape,
            batch_size * sequences,
            length,
            quantization,
            optimizer_bytes,
            checkpointing,
            # transformers picks sdpa when none is set; fit switches short rows on CPU to eager.
            eager_attention=materialises_attention(
                attention_for_length(
                    length, model.attn_implementation, model.attn_implementation or "sdpa", "cuda" if cuda else "cpu"
                )
            ),
            cuda=cuda,
            loading=loading,
            process=True,
            # The fit this predicts is started by `python -m lit_lora` from this environment.
            tuned_heap=launched_tuned(),
            weight_shards=shards if kind.shards_weights else 1,
            optimizer_shards=shards if kind.shards_optimizer else 1,
            checkpointed_layers=checkpointed_layers,
        )

    # What fit picks for the auto settings, from the same estimate and share of the
    # memory: fit plans once the model is loaded, with what the process then holds aside.
    loaded = estimate(1, False)
    resident = loaded.overhead + loaded.base_weights + loaded.adapter
    plan = plan_batch(
        lambda size, mode, layers: estimate(size, mode, layers).after_loading,
        data.batch_size,
        data.effective_batch_size,
        checkpointing_modes(model.gradient_checkpointing, allows_selective(peft_model), cuda),
        int(SAFETY_FRACTION * available) - resident,
        shape.num_layers,
        max_growth=math.inf if cuda else CPU_MAX_GROWTH,
        resident=resident,
        partial=model.gradient_checkpointing == "auto",
    )
    return PeakEstimate(
        estimate(*plan),
        available,
        "cuda" if cuda else "cpu",
        plan.batch_size,
        length,
        data.max_length,
    )


def longest_batch(data: Namespace) -> tuple[int, int]:
    """The data module's longest batch, once it has read the training and validation data.

    Args:
        data: The ``data`` settings (``class_path`` and ``init_args``).

    Returns:
        ``(tokens per sequence, sequences per example)``: the second is 2 for preference pairs.
    """
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    module = parser.instantiate_classes(Namespace(data=data)).data
    if not isinstance(module, DataModuleContract):
        return data.init_args.max_length, 1
    module.setup("fit")
    return module.longest_batch_length(), module.sequences_per_example


def main(args: Sequence[str]) -> PeakEstimate:
    """Print the predicted peak memory of a ``fit`` command line, per component, and whether it fits.

    Args:
        args: The command line after ``estimate``: ``fit``'s (``--config``, overrides).
    """
    result = predict_peak(args)
    print(result.table())
    return result
