"""The memory check at the start of a run, ``data.batch_size: auto`` and
``model.gradient_checkpointing: auto``.

Once the model is loaded, the run's memory is estimated (:mod:`lit_lora.training.memory`)
and printed, and a warning names what to change when it will not fit.

``gradient_checkpointing: auto`` takes the first mode of :func:`checkpointing_modes`
that fits, unless a later one lets ``batch_size: auto`` take a larger micro-batch:
on CUDA the fastest first (off, then ``selective``, then full); on CPU ``selective``
while the process needs at most ``CPU_MAX_GROWTH`` times what it needs with full
checkpointing, else full. Full checkpointing costs about one more forward pass per
step, less on CPU where ``lit_lora.model.replay`` replays the dropout masks;
``selective`` also replays the base layers' products, for more memory
(``docs/benchmarks.md``). Then, as each checkpointed layer costs time, ``auto``
checkpoints only as many decoder layers as it must to stay within the same bounds;
the others keep their activations.

``batch_size: auto`` picks the micro-batch from that estimate: the largest power of
two, at most ``data.effective_batch_size``, whose estimate fits in 90% of the memory
still available, and sets gradient accumulation to reach the effective batch size over
all devices (micro-batch x accumulation x devices).
An estimate rather than probing forward/backward passes until one runs out of
memory: a CPU has no out-of-memory error to catch (it swaps, or the process is
killed), and the estimate needs no extra passes on any device. It is taken at the
longest batch the data can make: batches are padded to their longest example, so
that is the longest example read (``max_length`` with packing), and every other
batch fits better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_lora.data.base import DataModuleContract
from lit_lora.model.attention import AttentionByLength
from lit_lora.model.quantization import QuantizationSettings
from lit_lora.training.heap import heap_tuned
from lit_lora.training.memory import (
    CPU_PROCESS_BYTES,
    MemoryEstimate,
    available_memory,
    estimate_memory,
    materialises_attention,
)
from lit_lora.training.shape import ModelShape, optimizer_state_bytes
from lit_lora.training.strategies import strategy_kind

# Share of the available memory an estimate may take: the rest is for what it
# leaves out (allocator fragmentation, temporary buffers, data loading).
SAFETY_FRACTION = 0.9

# On CPU a process's peak memory is taken from the whole machine, so ``auto`` trades
# memory for time only while it is cheap: the process (its libraries, the model and what
# training adds) may need at most this many times what it would with full checkpointing
# of every layer. Within it, selective checkpointing (about 8% faster than full on
# 1,000-token rows) is preferred, and layers left without checkpointing (each about 1/30
# of a step faster on short rows) take what is left. Short rows, whose activations are a
# small part of the process, keep most layers' activations; long rows checkpoint most
# layers (docs/benchmarks.md).
CPU_MAX_GROWTH = 1.5


class Plan(NamedTuple):
    """What a run's ``auto`` memory settings resolve to.

    Args:
        batch_size: The micro-batch.
        checkpointing: The checkpointing mode: ``False``, ``True`` or ``"selective"``.
        checkpointed_layers: How many decoder layers (the first ones) it recomputes; 0 without it.
    """

    batch_size: int
    checkpointing: bool | str
    checkpointed_layers: int


def largest_fitting_batch(need: Callable[[int], int], limit: int, budget: int) -> int:
    """The largest power of two up to ``limit`` whose need is within ``budget`` (at least 1).

    Args:
        need: Bytes a micro-batch of the given size needs.
        limit: Largest size to consider.
        budget: Bytes it may need.
    """
    size = 1
    while size * 2 <= limit and need(size * 2) <= budget:
        size *= 2
    return size


def checkpointing_modes(setting: bool | str, selective: bool, cuda: bool) -> tuple[bool | str, ...]:
    """The checkpointing modes ``model.gradient_checkpointing: setting`` lets a run take, preferred first.

    On CUDA ``auto`` prefers the fastest mode that fits: off, then ``selective``, then
    full. On CPU, where a process's peak memory is the machine's, it starts at
    ``selective`` where the model allows it: a step about 4% slower than off on short
    rows and 13% on 1,000-token rows, for about a third of off's activations
    (``docs/benchmarks.md``: 7,182 against 9,610 MiB peak on 8 x 1,000-token rows);
    :func:`plan_batch` with ``max_growth=CPU_MAX_GROWTH`` then falls back to full where
    selective would cost much more memory.

    Args:
        setting: ``true``, ``false``, ``selective`` or ``auto``.
        selective: Whether the model allows ``selective`` (frozen 4-bit or plain base layers).
        cuda: Whether the run trains on CUDA.
    """
    if setting != "auto":
        return (setting,)
    if not selective:
        return (False, True)
    return (False, "selective", True) if cuda else ("selective", True)


def plan_batch(
    need: Callable[[int, bool | str, int], int],
    batch_size: int | str,
    limit: int,
    modes: tuple[bool | str, ...],
    budget: int,
    num_layers: int,
    max_growth: float = math.inf,
    resident: int = 0,
    partial: bool = False,
) -> Plan:
    """Resolve ``batch_size`` and the checkpointing mode, either of which may be ``auto``.

    Args:
        need: Bytes a micro-batch of the given size needs in the given checkpointing
            mode with the given number of decoder layers checkpointed.
        batch_size: ``data.batch_size``: a size, or ``auto`` for the largest power of
            two up to ``limit`` that fits (at least 1).
        limit: ``data.effective_batch_size``, the largest micro-batch ``auto`` considers.
        modes: The checkpointing modes allowed, fastest first (:func:`checkpointing_modes`).
        budget: Bytes the run may need.
        num_layers: Decoder layers of the model.
        max_growth: The most a plan may need, as a multiple of what the last (most
            memory-saving) mode needs on every layer at the same micro-batch, both with
            ``resident`` added; a plan above it counts as not fitting. ``CPU_MAX_GROWTH``
            on CPU, unbounded on CUDA.
        resident: Bytes the process holds that ``need`` leaves out (libraries, the
            loaded model), so that the growth is the whole process's.
        partial: Checkpoint only as many layers as fitting requires (``auto``), rather
            than all of them.

    Returns:
        The micro-batch, the mode and how many layers it checkpoints.
    """

    def layers(mode: bool | str) -> int:
        return num_layers if mode is not False else 0

    def fits(size: int, mode: bool | str, checkpointed: int) -> bool:
        bytes_needed = need(size, mode, checkpointed)
        floor = need(size, modes[-1], layers(modes[-1]))
        return bytes_needed <= budget and resident + bytes_needed <= max_growth * (resident + floor)

    plans = []
    for mode in modes:
        size = batch_size
        if batch_size == "auto":
            size = largest_fitting_batch(
                lambda candidate, mode=mode: need(candidate, mode, layers(mode)), limit, budget
            )
        bytes_needed = need(size, mode, layers(mode))
        fitting = fits(size, mode, layers(mode))
        # Fitting first, then the larger micro-batch, then (when nothing fits) the smaller
        # need; a tie keeps the first plan: the fastest mode.
        plans.append(((fitting, size, 0 if fitting else -bytes_needed), size, mode))
    _, size, mode = max(plans, key=lambda plan: plan[0])
    checkpointed = layers(mode)
    if partial and checkpointed:
        # The fewest checkpointed layers that fit, else the count that needs least (with
        # lit_lora's estimate all but the last layer: backward frees that layer's
        # activations before it recomputes any other, see memory.activation_bytes).
        counts = range(num_layers + 1)
        fitting = [count for count in counts if fits(size, mode, count)]
        checkpointed = fitting[0] if fitting else min(counts, key=lambda count: need(size, mode, count))
    return Plan(size, mode if checkpointed else False, checkpointed)


def memory_verdict(need: int, available: int, needs: str) -> tuple[bool, str]:
    """Whether ``need`` bytes fit in ``SAFETY_FRACTION`` of ``available``, and the line that says so.

    The one wording of the check, for ``fit``'s warning and ``python -m lit_lora estimate``.

    Args:
        need: Bytes the run needs.
        available: Bytes the device has free.
        needs: What ``need`` is, read before the amount ("after loading the model it
            needs about").
    """
    budget = int(SAFETY_FRACTION * available)
    amounts = (
        f"{needs} {need / 2**20:,.0f} MiB, and {SAFETY_FRACTION:.0%} of the {available / 2**20:,.0f} MiB "
        f"available is {budget / 2**20:,.0f} MiB"
    )
    if need <= budget:
        return True, f"lit_lora: this run fits: {amounts}."
    return False, (
        f"lit_lora: this run will likely not fit: {amounts}. Lower data.batch_size (or set it to auto) and raise "
        "trainer.accumulate_grad_batches, lower data.max_length, set model.gradient_checkpointing: true, use a "
        "4-bit model.quantization.mode (nf4), or an 8-bit optimizer."
    )


def check_memory(
    trainer: Trainer,
    model: torch.nn.Module,
    quantization: QuantizationSettings,
    gradient_checkpointing: bool | str,
    optimizer_factory: Callable,
    selective: bool = False,
    attention: AttentionByLength | None = None,
) -> tuple[MemoryEstimate | None, Plan | None]:
    """Resolve the ``auto`` settings, print the memory estimate, and warn when it will not fit.

    Called once the model is loaded and before the optimizer and data loaders are
    built, so that a chosen micro-batch and accumulation apply to the whole run.

    Args:
        trainer: The running trainer; its data module gives ``batch_size`` and
            ``max_length`` (without them nothing is checked).
        model: The loaded, adapted model.
        quantization: How its base is stored.
        gradient_checkpointing: The ``model.gradient_checkpointing`` setting.
        optimizer_factory: Builds the optimizer from parameters; it is built once to
            tell its state size, before any step allocates that state.
        selective: Whether ``auto`` may choose selective checkpointing.
        attention: The attention kernel by row length; None: the model's own, at every length.

    Returns:
        The estimate at the micro-batch used and the plan, or ``(None, None)`` when
        there is no data module to plan for.
    """
    data = trainer.datamodule
    training = trainer.state.fn == TrainerFn.FITTING
    if not isinstance(data, DataModuleContract):
        return None, None
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer_bytes = optimizer_state_bytes(optimizer_factory(trainable), trainable) if training else 0
    shape = ModelShape.from_model(model)
    # The data module has read its splits by now (Lightning sets it up before configure_model).
    length = data.longest_batch_length()
    # Sequences in the batch per example: 2 for preference pairs.
    sequences = data.sequences_per_example
    device = trainer.strategy.root_device
    # Every device must pick the same micro-batch: take the least memory of any.
    free = torch.tensor(float(available_memory(device)), dtype=torch.float64, device=device)
    available = int(trainer.strategy.reduce(free, reduce_op="min"))
    budget = int(SAFETY_FRACTION * available)

    kind = strategy_kind(trainer.strategy)
    # The kernel of the longest batch, the one estimated.
    implementation = attention.implementation(length) if attention else model.config._attn_implementation

    def estimate(batch_size: int, checkpointing: bool | str, checkpointed_layers: int | None = None) -> MemoryEstimate:
        return estimate_memory(
            shape,
            batch_size * sequences,
            length,
            quantization,
            optimizer_bytes,
            checkpointing,
            eager_attention=materialises_attention(implementation),
            cuda=device.type == "cuda",
            training=training,
            tuned_heap=heap_tuned(),
            weight_shards=trainer.world_size if kind.shards_weights else 1,
            optimizer_shards=trainer.world_size if kind.shards_optimizer else 1,
            checkpointed_layers=checkpointed_layers,
        )

    # Evaluation keeps no activations for backward: checkpointing changes nothing.
    modes = checkpointing_modes(gradient_checkpointing, selective, device.type == "cuda") if training else (False,)
    loaded = estimate(1, False)
    plan = plan_batch(
        lambda size, mode, layers: estimate(size, mode, layers).after_loading,
        data.batch_size,
        data.effective_batch_size,
        modes,
        budget,
        shape.num_layers,
        max_growth=math.inf if device.type == "cuda" else CPU_MAX_GROWTH,
        # What the process holds before training adds to it, for the growth of the whole.
        resident=CPU_PROCESS_BYTES + loaded.base_weights + loaded.adapter,
        partial=gradient_checkpointing == "auto",
    )
    micro, checkpointing = plan.batch_size, plan.checkpointing
    if gradient_checkpointing == "auto" and training:
        chosen = {False: "off", True: "on"}.get(checkpointing, checkpointing)
        if checkpointing is not False:
            chosen += f", {plan.checkpointed_layers} of {shape.num_layers} layers"
        rank_zero_info(f"lit_lora: gradient_checkpointing auto: {chosen}")
    if data.batch_size == "auto":
        data.batch_size = micro
        if data.eval_batch_size == "auto":
            data.eval_batch_size = micro
        message = f"lit_lora: batch_size auto: micro-batch {micro}"
        if training:
            # Every device trains a micro-batch per accumulation step.
            target, devices = data.effective_batch_size, trainer.world_size
            accumulation = trainer.accumulate_grad_batches = math.ceil(target / (micro * devices))
            message += f" x gradient accumulation {accumulation}" + (f" x {devices} devices" if devices > 1 else "")
            message += f" (effective batch {micro * accumulation * devices}, data.effective_batch_size {target})"
        rank_zero_info(f"{message} at sequence length {length}")
    elif training:
        accumulation, devices = trainer.accumulate_grad_batches, trainer.world_size
        rank_zero_info(
            f"lit_lora: effective batch {data.batch_size * accumulation * devices} per optimizer step "
            f"(micro-batch {data.batch_size} x gradient accumulation {accumulation} x {devices} device(s))"
        )
    result = estimate(data.batch_size, checkpointing, plan.checkpointed_layers)
    rank_zero_info(
        f"lit_lora: estimated memory at batch_size {data.batch_size} x sequence length {length} (the longest "
        f"batch; data.max_length {data.max_length}), "
        f"{available / 2**20:,.0f} MiB available on {device.type}:\n{result.table()}"
    )
    fits, verdict = memory_verdict(result.after_loading, available, "after loading the model it needs about")
    if not fits:
        rank_zero_warn(verdict)
    return result, plan
