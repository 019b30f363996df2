"""Estimate of the memory a LoRA/QLoRA run needs, and of the memory the device has.

The estimate is a sum of components, each from counts and shapes alone (no
allocation), so it can be checked against a device before the first batch:

- base weights: the frozen linear layers at their quantized size (see
  :func:`quantized_bytes_per_param`), everything else (embeddings, norms, output
  head) in float32 when quantized (PEFT's ``prepare_model_for_kbit_training`` upcasts
  it) or in the compute dtype when not;
- adapter and gradients: the trainable parameters and their gradients, 4 bytes
  each (PEFT keeps adapters in float32);
- optimizer state: measured per parameter tensor by :func:`optimizer_state_bytes`;
- activations: what backward needs per layer, see :func:`activation_bytes`;
- logits: ``b·t·V`` scores in the compute dtype, plus the float32 copy and
  log-softmax of the loss (``lit_lora.model.loss``): often the largest activation
  of a small model with a large vocabulary;
- overhead: the CUDA context, which no tensor accounts for.

It is an estimate: allocator fragmentation and temporary buffers come on top,
which is why :mod:`lit_lora.auto_batch` keeps a safety margin.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import psutil
import torch
from torch.optim import Optimizer

from lit_lora.model.quantization import QuantizationSettings, resolve_dtype

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
# Activations per token and layer, in elements of the compute dtype (see activation_bytes).
_HIDDEN_ACTIVATIONS = 16
_INTERMEDIATE_ACTIVATIONS = 4
# The loss keeps a float32 copy of the supervised logits and their log-softmax: 8 bytes.
_LOSS_BYTES_PER_LOGIT = 8
# What a CUDA context with cuBLAS takes before any tensor (about 0.5 GiB).
CUDA_CONTEXT_BYTES = 512 * 2**20
# Optimizers keeping one state per parameter (momentum or a second moment alone);
# the rest are taken to keep two, like Adam.
_ONE_STATE_OPTIMIZERS = ("sgd", "lion", "rmsprop", "adagrad")


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


def optimizer_state_bytes(optimizer: Optimizer, parameters: list[torch.Tensor]) -> int:
    """Bytes of optimizer state ``optimizer`` will keep for ``parameters`` once stepped.

    Adam-like optimizers keep two states per parameter, SGD with momentum, Lion,
    RMSprop and Adagrad one, SGD without momentum none; each is 4 bytes (float32),
    or 1 byte for bitsandbytes 8-bit optimizers, which keep tensors smaller than
    their ``min_8bit_size`` (4096 elements) in float32 all the same. Unknown
    optimizers count as Adam-like.

    Args:
        optimizer: The optimizer, built but not yet stepped (states are made lazily).
        parameters: The parameters it updates.
    """
    name = type(optimizer).__name__.lower()
    states = 1 if any(kind in name for kind in _ONE_STATE_OPTIMIZERS) else 2
    if "sgd" in name and not optimizer.defaults.get("momentum"):
        states = 0
    min_8bit_size = getattr(getattr(optimizer, "args", None), "min_8bit_size", 4096)
    eight_bit = "8bit" in name
    return sum(
        states * p.numel() * (1 if eight_bit and p.numel() >= min_8bit_size else 4) for p in parameters
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
    """

    quantizable_params: int
    other_params: int
    trainable_params: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int

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
        )


def activation_bytes(
    shape: ModelShape, batch_size: int, max_length: int, dtype_bytes: int, gradient_checkpointing: bool,
    eager_attention: bool, training: bool = True,
) -> int:
    """Bytes of layer activations kept for the backward pass (logits excluded).

    One layer keeps about ``16·h + 4·i`` elements per token (``h`` hidden, ``i`` MLP
    width): norm inputs and outputs, the attention projections' inputs and outputs,
    the LoRA dropout copies of the adapted layers' inputs, the residual, and the
    SwiGLU MLP's gate, up, activation and product. Eager attention also keeps its
    ``heads x t`` probabilities per token; fused kernels (sdpa, flash) do not.

    Without checkpointing every layer keeps all of it. With checkpointing each layer
    keeps only its input (``h`` per token), and one layer at a time is recomputed in
    full during backward. Without training (validation) one layer's activations
    live at a time.

    Args:
        shape: The model's shape.
        batch_size: Sequences per micro-batch (``b``).
        max_length: Tokens per sequence (``t``); padded batches are at most this long.
        dtype_bytes: Bytes per element of the compute dtype.
        gradient_checkpointing: Whether activations are recomputed in backward.
        eager_attention: Whether attention probabilities are materialised.
        training: Whether a backward pass follows.
    """
    per_layer = _HIDDEN_ACTIVATIONS * shape.hidden_size + _INTERMEDIATE_ACTIVATIONS * shape.intermediate_size
    if eager_attention:
        per_layer += shape.num_heads * max_length
    if not training:
        per_token = per_layer
    elif gradient_checkpointing:
        per_token = shape.num_layers * shape.hidden_size + per_layer
    else:
        per_token = shape.num_layers * per_layer
    return batch_size * max_length * per_token * dtype_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, per component; :attr:`total` is their sum.

    Args:
        base_weights: The frozen base model.
        adapter: Trainable parameters.
        gradients: Their gradients.
        optimizer: Optimizer state.
        activations: Layer activations kept for backward.
        logits: Output scores and the loss's float32 copies.
        overhead: What no tensor accounts for (the CUDA context).
    """

    base_weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        """The sum of all components, in bytes."""
        return sum(getattr(self, field.name) for field in fields(self))

    @property
    def after_loading(self) -> int:
        """Bytes still to be allocated once the model is loaded: what training adds to it."""
        return self.gradients + self.optimizer + self.activations + self.logits

    def table(self) -> str:
        """The components and total, one per line, in MiB."""
        rows = [(field.name.replace("_", " "), getattr(self, field.name)) for field in fields(self)]
        rows.append(("total", self.total))
        return "\n".join(f"  {name:<13}{size / 2**20:>12,.1f} MiB" for name, size in rows)


def estimate_memory(
    shape: ModelShape,
    batch_size: int,
    max_length: int,
    quantization: QuantizationSettings,
    optimizer_bytes: int,
    gradient_checkpointing: bool,
    eager_attention: bool = False,
    cuda: bool = False,
    training: bool = True,
) -> MemoryEstimate:
    """Estimate the memory of a run, per component (see the module docstring).

    Args:
        shape: The model's shape.
        batch_size: Sequences per micro-batch.
        max_length: Tokens per sequence.
        quantization: How the frozen base is stored; its compute dtype is the
            activations' dtype.
        optimizer_bytes: Optimizer state, from :func:`optimizer_state_bytes`.
        gradient_checkpointing: Whether activations are recomputed in backward.
        eager_attention: Whether attention probabilities are materialised.
        cuda: Whether the run is on a CUDA device (adds its context).
        training: Whether gradients and optimizer state are needed (``fit``).
    """
    dtype_bytes = resolve_dtype(quantization.compute_dtype).itemsize
    other_bytes = 4 if quantization.quantized else dtype_bytes
    base = shape.quantizable_params * quantized_bytes_per_param(quantization) + shape.other_params * other_bytes
    tokens = batch_size * max_length
    return MemoryEstimate(
        base_weights=round(base),
        # Adapters and their gradients are float32.
        adapter=shape.trainable_params * 4,
        gradients=shape.trainable_params * 4 if training else 0,
        optimizer=optimizer_bytes if training else 0,
        activations=activation_bytes(
            shape, batch_size, max_length, dtype_bytes, gradient_checkpointing, eager_attention, training
        ),
        logits=tokens * shape.vocab_size * (dtype_bytes + _LOSS_BYTES_PER_LOGIT),
        overhead=CUDA_CONTEXT_BYTES if cuda else 0,
    )


def available_memory(device: torch.device) -> int:
    """Bytes free for a run on ``device``: free CUDA memory, or available RAM on CPU.

    Args:
        device: The device the model trains on.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available
