"""What a model's memory is made of before it runs: its shape, and the bytes per parameter.

:class:`ModelShape` holds the counts and sizes the estimate of
:mod:`lit_lora.training.memory` is computed from, read from a loaded model or from its
config alone (:func:`meta_model`, nothing allocated); the frozen weights' bytes per
parameter (:func:`quantized_bytes_per_param`) and the optimizer's state
(:func:`state_bytes_per_tensor`) follow from the settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

from lit_lora.model.quantization import QuantizationSettings, resolve_dtype
from lit_lora.model.replay import adapted_base_layers, masked_inputs

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel
    from transformers import PretrainedConfig

# bitsandbytes 4-bit: two weights per byte, plus one float32 absmax per block of 64
# weights; double quantization stores the absmax in 8 bits instead, with one float32
# constant per 256 absmax values (QLoRA, Dettmers et al. 2023: 0.5 -> 0.127 bits/param).
_BLOCK = 64
_DOUBLE_QUANT_BLOCK = 256
_FOUR_BIT = 0.5
_ABSMAX = 4 / _BLOCK
_DOUBLE_QUANT_ABSMAX = 1 / _BLOCK + 4 / (_BLOCK * _DOUBLE_QUANT_BLOCK)
# LLM.int8(): one byte per weight (its per-row float32 scales are negligible).
_EIGHT_BIT = 1.0
# Optimizers keeping one state per parameter (momentum or a second moment alone);
# the rest are taken to keep two, like Adam.
_ONE_STATE_OPTIMIZERS = ("sgd", "lion", "rmsprop", "adagrad")
# bitsandbytes 8-bit optimizers: one float32 scale per block of 256 state values,
# and float32 states for tensors below 4096 elements.
_EIGHT_BIT_BLOCK = 256
_MIN_8BIT_SIZE = 4096
# The optimizer of a config without one (lit_lora.training.optim.default_optimizer).
DEFAULT_OPTIMIZER = "bitsandbytes.optim.PagedAdamW8bit"


def quantized_bytes_per_param(quantization: QuantizationSettings) -> float:
    """Bytes per weight of a frozen linear layer stored as ``quantization`` says.

    Args:
        quantization: The run's quantization settings.
    """
    if quantization.mode in ("nf4", "fp4"):
        return _FOUR_BIT + (_DOUBLE_QUANT_ABSMAX if quantization.double_quant else _ABSMAX)
    if quantization.mode == "int8":
        return _EIGHT_BIT
    return resolve_dtype(quantization.compute_dtype).itemsize


def state_bytes_per_tensor(
    name: str, sizes: Sequence[int], momentum: float = 0.0, optim_bits: int = 32, min_8bit_size: int = _MIN_8BIT_SIZE
) -> int:
    """Bytes of optimizer state for parameter tensors of ``sizes`` elements: the one rule.

    Adam-like optimizers keep two states per parameter, SGD with momentum, Lion,
    RMSprop and Adagrad one, SGD without momentum none; each is 4 bytes (float32).
    bitsandbytes 8-bit optimizers (``...8bit`` classes, or ``optim_bits: 8``) keep
    each state in 1 byte plus one float32 scale per block of 256, except in tensors
    smaller than ``min_8bit_size``, which stay float32. Unknown optimizers count as
    Adam-like.

    Args:
        name: The optimizer's class name (``AdamW``, ``PagedAdamW8bit``...).
        sizes: Elements of each parameter tensor it updates.
        momentum: SGD's momentum (no state without it).
        optim_bits: bitsandbytes' state width, 32 or 8.
        min_8bit_size: bitsandbytes' smallest tensor with 8-bit states.
    """
    name = name.lower()
    states = 1 if any(kind in name for kind in _ONE_STATE_OPTIMIZERS) else 2
    if "sgd" in name and not momentum:
        states = 0
    eight_bit = "8bit" in name or optim_bits == 8

    def per_state(size: int) -> int:
        if eight_bit and size >= min_8bit_size:
            return size + 4 * math.ceil(size / _EIGHT_BIT_BLOCK)
        return 4 * size

    return sum(states * per_state(size) for size in sizes)


def optimizer_state_bytes(optimizer: Optimizer, parameters: list[torch.Tensor]) -> int:
    """Bytes of optimizer state ``optimizer`` will keep for ``parameters`` once stepped.

    Args:
        optimizer: The optimizer, built but not yet stepped (states are made lazily).
        parameters: The parameters it updates.
    """
    args = getattr(optimizer, "args", None)  # bitsandbytes optimizers keep their settings here
    return state_bytes_per_tensor(
        type(optimizer).__name__,
        [p.numel() for p in parameters],
        momentum=optimizer.defaults.get("momentum", 0.0),
        optim_bits=getattr(args, "optim_bits", 32),
        min_8bit_size=getattr(args, "min_8bit_size", _MIN_8BIT_SIZE),
    )


def configured_optimizer_state_bytes(
    class_path: str | None, init_args: dict[str, Any], parameters: list[torch.Tensor]
) -> int:
    """Bytes of optimizer state of a config's optimizer for ``parameters``, without building it.

    Args:
        class_path: The optimizer's ``class_path``; None is lit_lora's default,
            ``PagedAdamW8bit``.
        init_args: Its ``init_args`` (``momentum``, ``optim_bits``, ``min_8bit_size``
            matter here).
        parameters: The parameters it would update (meta tensors will do).
    """
    name = (class_path or DEFAULT_OPTIMIZER).rsplit(".", 1)[-1]
    return state_bytes_per_tensor(
        name,
        [p.numel() for p in parameters],
        momentum=init_args.get("momentum", 0.0),
        optim_bits=init_args.get("optim_bits", 32),
        min_8bit_size=init_args.get("min_8bit_size", _MIN_8BIT_SIZE),
    )


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a model depends on: parameter counts and layer sizes.

    Args:
        quantizable_params: Frozen weights of the linear layers bitsandbytes quantizes
            (all but the output head).
        other_params: The other frozen parameters: embeddings, norms, output head.
        trainable_params: Adapter (and ``modules_to_save``) parameters.
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the MLP.
        num_layers: Transformer blocks.
        num_heads: Attention heads.
        vocab_size: Size of the output vocabulary.
        adapted_outputs: Output features of all the layers under LoRA adapters,
            summed: what selective checkpointing keeps per token.
        masked_inputs: Input features of the adapted layers with LoRA dropout, summed:
            the mask elements checkpointing on CPU keeps per token for its replay.
    """

    quantizable_params: int
    other_params: int
    trainable_params: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    adapted_outputs: int = 0
    masked_inputs: int = 0

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModelShape:
        """Read the shape of a loaded (PEFT-wrapped, possibly quantized) causal LM.

        bitsandbytes packs 4-bit weights, so a quantized layer is counted by its
        ``in_features x out_features``, not by the size of its stored tensor. Linear
        layers left unquantized count as ``other_params``.

        Args:
            model: The model as trained.
        """
        import bitsandbytes as bnb  # imported here: loading it probes CUDA and prints notes

        quantized_layers = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
        packed = {id(layer.weight) for layer in quantized_layers}
        frozen = [p for p in model.parameters() if not p.requires_grad and id(p) not in packed]
        config = model.config
        return cls(
            quantizable_params=sum(layer.in_features * layer.out_features for layer in quantized_layers),
            other_params=sum(p.numel() for p in frozen),
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            hidden_size=config.hidden_size,
            intermediate_size=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            vocab_size=config.vocab_size,
            adapted_outputs=sum(layer.out_features for layer in adapted_base_layers(model)),
            masked_inputs=masked_inputs(model),
        )

    @classmethod
    def from_config(
        cls, config: PretrainedConfig, quantization: QuantizationSettings, peft_config: PeftConfig
    ) -> ModelShape:
        """The shape :meth:`from_model` reads from the loaded model, from its config alone.

        See :func:`meta_model`: nothing is allocated and no weight is read.

        Args:
            config: The base model's config.
            quantization: How the base is stored: which linear layers count as quantized.
            peft_config: The adapter: which layers get one, and its rank.
        """
        return cls.from_model(meta_model(config, quantization, peft_config))


def meta_model(config: PretrainedConfig, quantization: QuantizationSettings, peft_config: PeftConfig) -> PeftModel:
    """The adapted model ``fit`` trains, built on the meta device: shapes without storage.

    The linear layers are swapped for bitsandbytes' by transformers' own rule (the
    one ``from_pretrained`` applies: all but the output head and tied weights), and
    PEFT adds the adapter as it does on the loaded model, so counting parameters and
    layers gives exactly what the loaded model has.

    Args:
        config: The base model's config.
        quantization: How the base is stored.
        peft_config: The adapter's PEFT config.
    """
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations import replace_with_bnb_linear
    from transformers.quantizers.base import HfQuantizer

    # torch.device("meta") ties the output head to the embeddings as loading does
    # (accelerate's init_empty_weights leaves them two tensors).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        bnb_config = quantization.to_bnb_config()
        if bnb_config is not None:
            skip = HfQuantizer.get_modules_to_not_convert(
                model, bnb_config.llm_int8_skip_modules, model._keep_in_fp32_modules
            )
            model = replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=bnb_config)
        # Loading freezes the base (prepare_model_for_kbit_training, or PEFT itself).
        model.requires_grad_(False)
        return get_peft_model(model, peft_config)
