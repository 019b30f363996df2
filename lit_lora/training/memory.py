"""Estimate of the memory a LoRA/QLoRA run needs, and of the memory the device has.

The estimate is a sum of components, each from counts and shapes alone (no
allocation), so it can be checked against a device before the first batch, and
even before the model is loaded (``python -m lit_lora estimate``, which reads the
shape from the config alone: :meth:`lit_lora.training.shape.ModelShape.from_config`):

- base weights: the frozen linear layers at their quantized size (see
  :func:`lit_lora.training.shape.quantized_bytes_per_param`), everything else (embeddings, norms, output
  head) in float32 when quantized (PEFT's ``prepare_model_for_kbit_training`` upcasts
  it) or in the compute dtype when not;
- adapter and gradients: the trainable parameters and their gradients, 4 bytes
  each (PEFT keeps adapters in float32);
- optimizer state: per parameter tensor, from the built optimizer or from the
  config's ``class_path`` (:mod:`lit_lora.training.shape`);
- activations: what backward needs per layer, see :func:`activation_bytes`;
- logits: the loss computes the output head only on supervised positions, at most
  ``LOSS_CHUNK_ROWS`` rows at a time: each row is ``V`` scores in the compute dtype
  plus the float32 copy and log-softmax of the loss (``lit_lora.model.loss``);
- loading: what loading the base takes on CPU besides the weights it keeps, see
  :func:`loading_bytes`; freed before training, so the peak counts the larger of it
  and what training adds;
- overhead: the CUDA context on a GPU, or on CPU the Python process itself
  (``CPU_PROCESS_BYTES``), which no tensor accounts for;
- retained: on CPU, the dequantized weights glibc keeps after freeing them when it
  runs with its default caches, see :func:`retained_bytes` (none with the settings
  ``python -m lit_lora`` starts with, :mod:`lit_lora.training.heap`).

The constants come from peak RSS measured on CPU (``docs/memory.md`` has the
measurements and how they were taken).

It is an estimate: allocator fragmentation and temporary buffers come on top,
which is why :mod:`lit_lora.training.planning` keeps a safety margin.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import psutil
import torch

# The loss's chunk of output-head rows: the logits component is one chunk.
from lit_lora.model.loss import LOSS_CHUNK_ROWS
from lit_lora.model.quantization import QuantizationSettings, resolve_dtype
from lit_lora.training.shape import ModelShape, quantized_bytes_per_param

# Activations per token and layer, in elements of the compute dtype (see activation_bytes).
_HIDDEN_ACTIVATIONS = 16
_INTERMEDIATE_ACTIVATIONS = 4
# The loss keeps a float32 copy of the supervised logits and their log-softmax: 8 bytes.
_LOSS_BYTES_PER_LOGIT = 8
# What a CUDA context with cuBLAS takes before any tensor (about 0.5 GiB).
CUDA_CONTEXT_BYTES = 512 * 2**20
# The Python process of a CPU fit with its libraries, tokenizer, data and Trainer,
# before any model tensor (measured: docs/memory.md).
CPU_PROCESS_BYTES = 640 * 2**20
# Weight files a model folder may hold, for the bytes loading maps.
_WEIGHT_FILES = ("*.safetensors", "*.bin")


def checkpointing_enabled(value: Any) -> bool:
    """Whether ``model.gradient_checkpointing: value`` recomputes activations.

    Anything but ``False`` counts as on: ``True``, and a setting such as ``auto``
    that turns it on when memory is short, which is when the estimate matters.

    Args:
        value: The setting as configured.
    """
    return value is not False


def materialises_attention(attn_implementation: str | None) -> bool:
    """Whether attention keeps its ``heads x t`` probabilities per token for backward.

    Eager attention does; sdpa and flash attention do not, on CPU too (measured:
    ``docs/memory.md``).

    Args:
        attn_implementation: ``model.attn_implementation`` (None: transformers picks sdpa).
    """
    return attn_implementation == "eager"


def activation_bytes(
    shape: ModelShape,
    batch_size: int,
    max_length: int,
    dtype_bytes: int,
    gradient_checkpointing: bool | str,
    eager_attention: bool,
    training: bool = True,
    replayed_masks: bool = False,
    checkpointed_layers: int | None = None,
) -> int:
    """Bytes of layer activations kept for the backward pass (logits excluded).

    One layer keeps about ``16·h + 4·i`` elements per token (``h`` hidden, ``i`` MLP
    width): norm inputs and outputs, the attention projections' inputs and outputs,
    the LoRA dropout copies of the adapted layers' inputs, the residual, and the
    SwiGLU MLP's gate, up, activation and product. Materialised attention (see
    :func:`materialises_attention`) also keeps its ``heads x t`` probabilities per
    token, and backward makes their gradient, one layer at a time.

    Without checkpointing every layer keeps all of it. With checkpointing each layer
    keeps only its input (``h`` per token), and one layer at a time is recomputed in
    full during backward; selective checkpointing also keeps the outputs of the
    adapted base layers (``lit_lora.model.replay``). When only some layers are
    checkpointed, the others keep all of it. Without training (validation) one
    layer's activations live at a time.

    Args:
        shape: The model's shape.
        batch_size: Sequences per micro-batch (``b``).
        max_length: Tokens per sequence (``t``); padded batches are at most this long.
        dtype_bytes: Bytes per element of the compute dtype.
        gradient_checkpointing: The ``model.gradient_checkpointing`` setting (see
            :func:`checkpointing_enabled`).
        eager_attention: Whether attention probabilities are materialised.
        training: Whether a backward pass follows.
        replayed_masks: Whether checkpointing keeps the LoRA dropout masks for its
            recomputation (``lit_lora.model.replay``, on CPU): one byte per element,
            ``shape.masked_inputs`` per token (more than full checkpointing keeps of
            the layers' inputs).
        checkpointed_layers: How many decoder layers checkpointing recomputes (None:
            all of them); ignored without checkpointing.
    """
    per_layer = _HIDDEN_ACTIVATIONS * shape.hidden_size + _INTERMEDIATE_ACTIVATIONS * shape.intermediate_size
    probabilities = shape.num_heads * max_length if eager_attention else 0
    per_layer += probabilities
    layers = shape.num_layers
    checkpointed = 0
    if training and checkpointing_enabled(gradient_checkpointing):
        checkpointed = layers if checkpointed_layers is None else checkpointed_layers
    if not training:
        per_token = per_layer
    elif checkpointed:
        # Checkpointed layers (the first ones) keep their inputs, the others everything.
        # Backward recomputes one checkpointed layer at a time, once it has freed the
        # later layers' activations: that layer's adds to the peak only when every layer
        # is checkpointed. The probabilities' gradient comes on top, as without checkpointing.
        kept = max(layers - checkpointed, 1) * per_layer
        per_token = checkpointed * shape.hidden_size + kept + probabilities
        if gradient_checkpointing == "selective":
            per_token += shape.adapted_outputs * checkpointed // layers
    else:
        per_token = layers * per_layer + probabilities
    masks = shape.masked_inputs * checkpointed // layers if replayed_masks else 0
    return batch_size * max_length * (per_token * dtype_bytes + masks)


def logits_bytes(shape: ModelShape, batch_size: int, max_length: int, dtype_bytes: int) -> int:
    """Bytes of output scores the loss holds at once: one chunk of supervised rows.

    The loss runs the output head on at most ``LOSS_CHUNK_ROWS`` supervised positions
    at a time; each row is ``V`` scores in the compute dtype plus the loss's float32
    copy and log-softmax. Every position may be supervised, so a micro-batch of fewer
    than ``LOSS_CHUNK_ROWS`` tokens is one chunk of all of them.

    Args:
        shape: The model's shape.
        batch_size: Sequences per micro-batch.
        max_length: Tokens per sequence.
        dtype_bytes: Bytes per element of the compute dtype.
    """
    rows = min(batch_size * max_length, LOSS_CHUNK_ROWS)
    return rows * shape.vocab_size * (dtype_bytes + _LOSS_BYTES_PER_LOGIT)


def loading_bytes(source_bytes: int, total_params: int, quantization: QuantizationSettings) -> int:
    """Bytes loading the base takes on CPU on top of the weights it keeps.

    ``from_pretrained`` maps the weight files (their pages count as resident once
    read) and converts every tensor to the compute dtype before bitsandbytes
    quantizes it, so the files and one converted copy are resident at the peak. Both
    are gone before training starts; on a GPU the weights are quantized one tensor
    at a time as they arrive, and loading adds nothing worth counting.

    Args:
        source_bytes: Size of the weight files loaded (:func:`weight_file_bytes`).
        total_params: Parameters of the base model.
        quantization: How the base is stored; its compute dtype is the copy's.
    """
    return source_bytes + total_params * resolve_dtype(quantization.compute_dtype).itemsize


def weight_file_bytes(folder: str | Path) -> int:
    """Size of the weight files of a model folder: what loading it reads (0 when it has none).

    Args:
        folder: A Hugging Face model folder.
    """
    return sum(path.stat().st_size for pattern in _WEIGHT_FILES for path in Path(folder).glob(pattern))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, per component; :attr:`total` is the peak they add up to.

    Args:
        base_weights: The frozen base model.
        adapter: Trainable parameters.
        gradients: Their gradients.
        optimizer: Optimizer state.
        activations: Layer activations kept for backward.
        logits: Output scores and the loss's float32 copies.
        overhead: What no tensor accounts for (the CUDA context, or the process on CPU).
        loading: What loading the base takes besides the weights it keeps, freed
            before training (0 once the model is loaded).
        retained: On CPU, freed memory the allocator keeps in the process while
            training a quantized base (see :func:`retained_bytes`).
    """

    base_weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    loading: int = 0
    retained: int = 0

    @property
    def total(self) -> int:
        """The peak in bytes: what stays, plus the larger of loading and training."""
        return self.overhead + self.base_weights + self.adapter + max(self.loading, self.after_loading)

    @property
    def after_loading(self) -> int:
        """Bytes still to be allocated once the model is loaded: what training adds to it."""
        return self.gradients + self.optimizer + self.activations + self.logits + self.retained

    def table(self) -> str:
        """The components and the total, one per line, in MiB."""
        rows = [(field.name.replace("_", " "), getattr(self, field.name)) for field in fields(self)]
        rows.append(("total (peak)" if self.loading else "total", self.total))
        return "\n".join(f"  {name:<13}{size / 2**20:>12,.1f} MiB" for name, size in rows)


def estimate_memory(
    shape: ModelShape,
    batch_size: int,
    max_length: int,
    quantization: QuantizationSettings,
    optimizer_bytes: int,
    gradient_checkpointing: bool | str,
    eager_attention: bool = False,
    cuda: bool = False,
    training: bool = True,
    loading: int = 0,
    process: bool = False,
    tuned_heap: bool = False,
    weight_shards: int = 1,
    optimizer_shards: int = 1,
    checkpointed_layers: int | None = None,
) -> MemoryEstimate:
    """Estimate the memory of a run, per component (see the module docstring).

    Args:
        shape: The model's shape.
        batch_size: Sequences per micro-batch.
        max_length: Tokens per sequence.
        quantization: How the frozen base is stored; its compute dtype is the
            activations' dtype (float32 for a quantized base, see below).
        optimizer_bytes: Optimizer state, from :func:`optimizer_state_bytes` or
            :func:`configured_optimizer_state_bytes`.
        gradient_checkpointing: The ``model.gradient_checkpointing`` setting (see
            :func:`checkpointing_enabled`).
        eager_attention: Whether attention probabilities are materialised.
        cuda: Whether the run is on a CUDA device (adds its context).
        training: Whether gradients and optimizer state are needed (``fit``).
        loading: What loading the model will take, from :func:`loading_bytes`; 0
            once it is loaded.
        process: Count the Python process itself on CPU (``CPU_PROCESS_BYTES``): the
            whole process's peak rather than what is left to allocate in it.
        tuned_heap: Whether the process runs glibc with :data:`lit_lora.training.heap.HEAP_TUNABLES`,
            whose freed blocks merge again: nothing is counted as retained then.
        weight_shards: Devices the frozen base is split over (FSDP, ZeRO-3): each holds
            its share, plus one decoder layer gathered whole while it runs.
        optimizer_shards: Devices the optimizer state is split over (ZeRO, FSDP1).
        checkpointed_layers: How many decoder layers checkpointing recomputes (None: all).
    """
    dtype_bytes = resolve_dtype(quantization.compute_dtype).itemsize
    # prepare_model_for_kbit_training keeps a quantized model's other weights (norms,
    # embeddings) in float32, so its residual stream and norms are float32 too, and
    # autocast saves its half-precision casts of them on top: activations count float32.
    other_bytes = 4 if quantization.quantized else dtype_bytes
    layers = shape.quantizable_params * quantized_bytes_per_param(quantization)
    base = layers + shape.other_params * other_bytes
    if weight_shards > 1:
        base = base / weight_shards + layers / max(shape.num_layers, 1)
    if cuda:
        overhead = CUDA_CONTEXT_BYTES
    else:
        overhead = CPU_PROCESS_BYTES if process else 0
    return MemoryEstimate(
        base_weights=round(base),
        # Adapters and their gradients are float32.
        adapter=shape.trainable_params * 4,
        gradients=shape.trainable_params * 4 if training else 0,
        optimizer=optimizer_bytes // optimizer_shards if training else 0,
        activations=activation_bytes(
            shape,
            batch_size,
            max_length,
            other_bytes,
            gradient_checkpointing,
            eager_attention,
            training,
            replayed_masks=not cuda,
            checkpointed_layers=checkpointed_layers,
        ),
        logits=logits_bytes(shape, batch_size, max_length, dtype_bytes),
        overhead=overhead,
        loading=0 if cuda else loading,
        retained=0 if cuda or not training or tuned_heap else retained_bytes(shape, quantization),
    )


def retained_bytes(shape: ModelShape, quantization: QuantizationSettings) -> int:
    """Freed memory glibc keeps in a CPU training process of a quantized base, with its default caches.

    Every forward and every backward dequantizes each 4-bit or 8-bit layer to the
    compute dtype, a few MB at a time, freed at once. glibc serves such blocks from
    its heap once it has raised its mmap threshold past them, and their holes, pinned
    between tensors that live on, stay in the resident set: about two passes' worth of
    dequantized weights (measured: ``docs/memory.md``). With
    :data:`lit_lora.training.heap.HEAP_TUNABLES` (``python -m lit_lora``) the freed blocks merge
    and are reused, and the estimate counts none of this.

    Args:
        shape: The model's shape.
        quantization: How its base is stored; nothing is retained when it is not quantized.
    """
    if not quantization.quantized:
        return 0
    return 2 * shape.quantizable_params * resolve_dtype(quantization.compute_dtype).itemsize


def available_memory(device: torch.device) -> int:
    """Bytes free for a run on ``device``: free CUDA memory, or available RAM on CPU.

    Args:
        device: The device the model trains on.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available
