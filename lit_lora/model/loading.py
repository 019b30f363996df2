"""Building the (optionally quantized) base model from its source."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lit_lora.artifacts.source import cache_root, cached_folder, resolve_model_folder
from lit_lora.model.quantization import QuantizationSettings, resolve_dtype


def base_model_folder(model_name_or_path: str, gguf_file: str | None, random_init: bool, seed: int) -> str:
    """What ``from_pretrained`` loads a base model from: its folder or hub id, the
    converted GGUF folder, or the cached random-weights folder built from its config.

    Training, ``merge``, ``generate`` and ``evaluate`` all go through here, so they
    rebuild the very same base weights from the same four settings.
    """
    folder = resolve_model_folder(model_name_or_path, gguf_file)
    return str(random_weights_folder(folder, seed)) if random_init else folder


def random_weights_folder(config_folder: str, seed: int) -> Path:
    """Materialise a randomly initialised model for ``config_folder/config.json``, once.

    Transformers quantizes with bitsandbytes only while loading from files, so a
    random model is written to a cache folder (keyed by the config's content and the
    seed) and then loaded like any pretrained one. The same config and seed always
    give the same weights, which is what lets a test rebuild the exact base later.
    """
    config = AutoConfig.from_pretrained(config_folder)
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    key = hashlib.sha256(f"{text}|{seed}".encode()).hexdigest()[:16]
    folder = cache_root() / "random" / f"{config.model_type}-{key}"

    def write(out: Path) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(out)

    return cached_folder(folder, write)


def load_base_model(
    folder: str,
    quantization: QuantizationSettings,
    device: torch.device,
    attn_implementation: str | None = None,
    model_class: type = AutoModelForCausalLM,
    keep_unquantized: Sequence[str] = (),
    **config: Any,
) -> PreTrainedModel:
    """Load a model from ``folder`` (or a hub id) onto ``device``, quantized as configured.

    Loading straight onto the training device matters for bitsandbytes: the weights
    are quantized as they arrive, so a 7B model never exists in 16-bit on the GPU.

    Args:
        folder: The model folder or hub id.
        quantization: How the linear layers are stored.
        device: Where the model is loaded.
        attn_implementation: Attention kernel; ``None`` lets transformers choose.
        model_class: The ``AutoModelFor...`` class to build (a causal LM by default).
        keep_unquantized: Names of modules bitsandbytes must leave in full precision
            (a classification head that trains in full).
        **config: Overrides of the model config (``num_labels``, ``pad_token_id``...).
    """
    kwargs = dict(config)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    bnb_config = quantization.to_bnb_config()
    if bnb_config is not None and keep_unquantized:
        bnb_config.llm_int8_skip_modules = list(keep_unquantized)
    model = model_class.from_pretrained(
        folder,
        quantization_config=bnb_config,
        dtype=resolve_dtype(quantization.compute_dtype),
        device_map={"": device},
        **kwargs,
    )
    if quantization.quantized:
        keep_4bit_training_layout(model)
        if device.type == "cpu":
            copy_out_of_checkpoint_file(model)
    return model


def copy_out_of_checkpoint_file(model: torch.nn.Module) -> None:
    """Give the quantized model's full-precision tensors memory of their own on CPU.

    transformers memory-maps a safetensors checkpoint, and a tensor whose dtype is
    already the one asked for stays a view of that mapping. In a quantized model those
    views are the few unquantized tensors (embeddings, norms, an untied head), yet they
    keep the whole mapping alive, and every page of it that quantization read stays
    in the process's resident memory: a float32 SmolLM2-135M checkpoint left 415 MiB
    of file pages behind a 110 MiB embedding. Copying them lets the mapping close.
    Quantized weights are new integer tensors already and are left as they are.

    Args:
        model: A model loaded onto the CPU with quantized linear layers.
    """
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.clone()
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                # Assigning to a registered buffer's name replaces it and keeps its persistence.
                setattr(module, name, buffer.clone())


def keep_4bit_training_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, the first forward of a ``Linear4bit`` in eval mode
    without grad (validation, generation) rewrites its weights into an inference-only
    layout and never undoes it. Every later training forward then goes through that
    layout's kernel, whose numerics differ and whose backward gives wrong input
    gradients: LoRA gradients moved by ~10% after a single validation pass. Training,
    validation and an exported adapter must all see the same base model.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
