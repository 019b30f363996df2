"""Estimate of the memory a LoRA/QLoRA run needs, and of the memory the device has.

The estimate is a sum of components, each from counts and shapes alone (no
allocation), so it can be checked against a device before the first batch, and
even before the model is loaded (``python -m lit_lora estimate``, which reads the
shape from the config alone: :meth:`ModelShape.from_config`):

- base weights: the frozen linear layers at their quantized size (see
  :func:`quantized_bytes_per_param`), everything else (embeddings, norms, output
  head) in float32 when quantized (PEFT's ``prepare_model_for_kbit_training`` upcasts
  it) or in the compute dtype when not;
- adapter and gradients: the trainable parameters and their gradients, 4 bytes
  each (PEFT keeps adapters in float32);
- optimizer state: per parameter tensor by :func:`state_bytes_per_tensor`, from the
  built optimizer (:func:`optimizer_state_bytes`) or from the config's
  ``class_path`` (:func:`configured_optimizer_state_bytes`);
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

Where the constants come from, measured on CPU (torch 2.13, transformers 5.23,
bitsandbytes 0.50, lightning 2.6, Python 3.11, 2 cores) as peak RSS: ``ru_maxrss`` of
a ``fit`` child process, and per phase the process's high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs`` between phases):

- ``CPU_PROCESS_BYTES``: importing torch, transformers, PEFT, bitsandbytes, Lightning
  and lit_lora peaks at 594 MiB (``python -c "import lit_lora.cli, lit_lora.model"``
  and a ``fit`` before it loads anything alike); ``fit`` then imports and builds more
  (tokenizer, data, Trainer, logger): ``configs/tiny.yaml`` for 2 steps peaks at
  674 MiB, of which the estimate's tensors are 28 MiB, so 640 MiB is the process.
- loading: a ``fit`` of ``configs/benchmark.yaml`` (SmolLM2-135M, 134.5M parameters)
  peaks 935 MiB above the imports while loading from its float32 cache folder: the
  513 MiB file, mapped, plus a 257 MiB bfloat16 copy, plus the 160 MiB quantized
  model = 930 MiB predicted. After loading, RSS stays 422 MiB above the imports:
  glibc keeps the freed copy and training reuses it, which is why the peak takes
  the larger of loading and training rather than their sum. The run's overall peak
  is 1,529-1,592 MiB over three runs, predicted 1,589 MiB.
- activations: the tiny model at 16,384 tokens (``max_length`` 512, every row full)
  peaks at 1,082-1,114 MiB without checkpointing (predicted 1,223) and 1,007 MiB with
  it (predicted 1,007); the same tokens as 64 x 256 peak 115 MiB lower, the
  attention probabilities (see :func:`materialises_attention`).

The CPU measurements above were made with glibc's default heap; with the settings
``python -m lit_lora`` starts with (:mod:`lit_lora.training.heap`) the tiny run at 32 x 512
tokens peaks at 904 MiB (predicted 847: sdpa keeps no probabilities, see
:func:`materialises_attention`).

It is an estimate: allocator fragmentation and temporary buffers come on top,
which is why :mod:`lit_lora.training.planning` keeps a safety margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch
from torch.optim import Optimizer

# The loss's chunk of output-head rows: the logits component is one chunk.
from lit_lora.model.loss import LOSS_CHUNK_ROWS
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
# Activations per token and layer, in elements of the compute dtype (see activation_bytes).
_HIDDEN_ACTIVATIONS = 16
_INTERMEDIATE_ACTIVATIONS = 4
# The loss keeps a float32 copy of the supervised logits and their log-softmax: 8 bytes.
_LOSS_BYTES_PER_LOGIT = 8
# What a CUDA context with cuBLAS takes before any tensor (about 0.5 GiB).
CUDA_CONTEXT_BYTES = 512 * 2**20
# The Python process of a CPU fit with its libraries, tokenizer, data and Trainer,
# before any model tensor (measured: see the module docstring).
CPU_PROCESS_BYTES = 640 * 2**20
# Optimizers keeping one state per parameter (momentum or a second moment alone);
# the rest are taken to keep two, like Adam.
_ONE_STATE_OPTIMIZERS = ("sgd", "lion", "rmsprop", "adagrad")
# bitsandbytes 8-bit optimizers: one float32 scale per block of 256 state values,
# and float32 states for tensors below 4096 elements.
_EIGHT_BIT_BLOCK = 256
_MIN_8BIT_SIZE = 4096
# The optimizer of a config without one (lit_lora.training.optim.default_optimizer).
DEFAULT_OPTIMIZER = "bitsandbytes.optim.PagedAdamW8bit"
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


def materialises_attention(attn_implementation: str | None) -> bool:
    """Whether attention keeps its ``heads x t`` probabilities per token for backward.

    Eager attention does; sdpa and flash attention do not, on CPU too (torch 2.13).
    Measured on CPU with glibc's heap settings (:mod:`lit_lora.training.heap`), the tiny model
    without checkpointing at 32 x 512 tokens: peak RSS 1,387 MiB with eager attention,
    904 MiB with sdpa, the two layers' probabilities and their gradient apart. (With
    glibc's default heap the sdpa run peaked at 1.08-1.11 GB, which had looked like
    materialised probabilities.)

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
    adapted base layers (``lit_lora.model.replay``). Without training (validation)
    one layer's activations live at a time.

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
            ``shape.masked_inputs`` per token (on the benchmark 150 kB a token, twice
            what full checkpointing keeps of the layers' inputs).
    """
    per_layer = _HIDDEN_ACTIVATIONS * shape.hidden_size + _INTERMEDIATE_ACTIVATIONS * shape.intermediate_size
    probabilities = shape.num_heads * max_length if eager_attention else 0
    per_layer += probabilities
    if not training:
        per_token = per_layer
    elif checkpointing_enabled(gradient_checkpointing):
        per_token = shape.num_layers * shape.hidden_size + per_layer + probabilities
        if gradient_checkpointing == "selective":
            per_token += shape.adapted_outputs
    else:
        per_token = shape.num_layers * per_layer + probabilities
    masks = shape.masked_inputs if replayed_masks and training and checkpointing_enabled(gradient_checkpointing) else 0
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
    """
    dtype_bytes = resolve_dtype(quantization.compute_dtype).itemsize
    # prepare_model_for_kbit_training keeps a quantized model's other weights (norms,
    # embeddings) in float32, so its residual stream and norms are float32 too, and
    # autocast saves its half-precision casts of them on top: activations count float32.
    other_bytes = 4 if quantization.quantized else dtype_bytes
    base = shape.quantizable_params * quantized_bytes_per_param(quantization) + shape.other_params * other_bytes
    if cuda:
        overhead = CUDA_CONTEXT_BYTES
    else:
        overhead = CPU_PROCESS_BYTES if process else 0
    return MemoryEstimate(
        base_weights=round(base),
        # Adapters and their gradients are float32.
        adapter=shape.trainable_params * 4,
        gradients=shape.trainable_params * 4 if training else 0,
        optimizer=optimizer_bytes if training else 0,
        activations=activation_bytes(
            shape,
            batch_size,
            max_length,
            other_bytes,
            gradient_checkpointing,
            eager_attention,
            training,
            replayed_masks=not cuda,
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
    between tensors that live on, stay in the resident set. Measured on SmolLM2-135M
    QLoRA (106M quantized weights, batch 8 x 91 tokens, 2-core CPU): peak RSS minus the
    live tensors was 950-1,040 MiB in float32, with and without checkpointing, about
    two passes' worth of dequantized weights (850 MiB); fixing the mmap threshold
    instead returned it to the system at 2.2x the step time. With
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
