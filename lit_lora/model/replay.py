"""What activation checkpointing's recomputation replays from the forward pass instead of computing again.

With checkpointing, each decoder layer's forward runs a second time in the backward
pass to rebuild the tensors its backward needs. Two parts of that rerun cost much
and rebuild nothing that could not have been kept cheaply:

- LoRA dropout. PEFT's ``nn.Dropout`` draws every mask again (from the restored RNG
  state, so the same masks). On a CPU those draws are expensive, and checkpointing
  doubles them. :class:`ReplayDropout` keeps each mask it drew (one byte per element)
  and hands it back, so a checkpointed step costs about what a step without
  checkpointing does (``docs/benchmarks.md``). It also draws its masks faster than
  ``bernoulli_``, see :func:`keep_mask`, so on CPU it replaces PEFT's dropout with or
  without checkpointing. On a GPU the draws are cheap and the masks of a large batch
  are gigabytes, so it is used only on CPU.
- The frozen base's matmuls (``gradient_checkpointing: selective``). Dequantizing a
  4-bit weight and multiplying by it is most of a layer's forward, yet its product
  only flows on: the backward through a frozen ``y = x W^T`` needs ``W``, not ``x``
  or ``y``, and the rerun only rebuilds the tensors other ops saved (the forward's
  own graph takes the gradient). :class:`ReplayLinear` keeps each product and hands
  it back to the rerun, which is left with the adapters, norms, attention and
  elementwise ops. The price is the products: ``sum(out_features)`` values per token
  per layer (5,184 for SmolLM2-135M), against about 18,000 that a layer keeps
  without checkpointing.

Each replaying module queues what its forward produced when gradients are on, and
takes the oldest queued value when it runs inside a backward pass (a recomputation).
Call :meth:`ReplayQueue.reset` on every queue before each micro-batch:
non-reentrant checkpointing stops a rerun as soon as it has rebuilt what backward
needs, so a queued value may never be taken, and must not be taken by the next batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from functools import cache
from typing import Any

import torch
from torch import nn


def in_backward() -> bool:
    """Whether the autograd engine is running: the case of a checkpoint's recomputation."""
    return torch._C._current_graph_task_id() != -1


class ReplayQueue:
    """Values a module's training forward produced, in order, for its recomputations to take.

    Args:
        owner: What the values are, for the error when a recomputation finds none.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._values: deque[Any] = deque()

    def keep(self, value: Any) -> None:
        """Queue ``value`` for the recomputation of this forward."""
        self._values.append(value)

    def take(self) -> Any:
        """The newest value not yet taken.

        A micro-batch may run as several forward passes whose losses are summed
        (``lit_lora.model.length_split``); autograd then runs the backward of the last
        pass first (it orders ready nodes by creation, newest first), so its
        recomputation takes the last value kept.
        """
        if not self._values:
            raise RuntimeError(f"{self.owner}: recomputed without a value kept from the forward pass.")
        return self._values.pop()

    def reset(self) -> None:
        """Forget values of earlier micro-batches."""
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


# Dropout masks are drawn as 16-bit integers, four from each full 64-bit draw of the
# CPU generator, so the keep probability is exact to 2^-16 (p = 0.05 becomes 0.0500031).
_MASK_BITS = 16


def keep_mask(shape: torch.Size, keep: float, device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """A boolean mask, ``True`` with probability ``keep`` (to within 2^-16) in each element.

    ``bernoulli_`` draws one double per element, one element at a time, on every CPU
    but Intel's (where ATen hands it to MKL): 11.2 ns an element on a 2-core AMD EPYC,
    over a sixth of a SmolLM2-135M QLoRA step. Cutting each 64-bit integer draw into
    four 16-bit lanes takes one generator call per four elements, half the time of two
    31-bit lanes a draw (``docs/benchmarks.md``), and the result stays one byte per
    element.

    Args:
        shape: Shape of the mask.
        keep: Probability of ``True``.
        device: Where the mask is drawn.

    Returns:
        The mask, and the exact probability it keeps with, to scale the kept values by.
    """
    count = math.prod(shape)
    kept_lanes = round(keep * 2**_MASK_BITS)
    if kept_lanes == 2**_MASK_BITS:  # keep within 2^-17 of 1: a bound of 2^15 does not fit an int16
        return torch.ones(shape, dtype=torch.bool, device=device), 1.0
    # random_(-2**63, None) asks for the whole int64 range: 64 random bits a word, so
    # each signed 16-bit lane is uniform on [-2^15, 2^15) and below
    # ``kept_lanes - 2^15`` in exactly ``kept_lanes`` of its 2^16 values.
    words = torch.empty(-(-count // 4), dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:count]
    return (lanes < kept_lanes - 2 ** (_MASK_BITS - 1)).view(shape), kept_lanes / 2**_MASK_BITS


class ReplayDropout(nn.Module):
    """Dropout with fast mask draws (:func:`keep_mask`), replayed when checkpointing recomputes it.

    Args:
        p: Probability of zeroing an element.
        replay: Keep each mask of a forward with gradients for the recomputation to
            take: for checkpointed runs only, as without recomputation nobody takes them.
    """

    def __init__(self, p: float, replay: bool = True) -> None:
        super().__init__()
        self.p = p
        self.replay = ReplayQueue("ReplayDropout") if replay else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.replay is not None and in_backward():
            mask, keep = self.replay.take()
        else:
            mask, keep = keep_mask(x.shape, 1.0 - self.p, x.device)
            if self.replay is not None and torch.is_grad_enabled():
                self.replay.keep((mask, keep))
        # In place on the masked product, whose backward needs only the mask: one allocation fewer.
        return (x * mask).mul_(1.0 / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _KeptProduct(torch.autograd.Function):
    """Hands a kept product ``y = x W^T`` to checkpointing's recomputation as if the layer had computed it.

    Non-reentrant checkpointing (the kind lit_lora uses; a reentrant one runs the
    forward without gradients, so nothing would be kept) reruns a layer only to
    rebuild the tensors the forward's graph saved, matched one by one, and then drops
    the rerun's graph: this node never runs backward. It must save what the layer's
    own forward saves, no more and no less: a plain layer's transposed weight (as cast
    by autocast), nothing for a 4-bit layer, whose packed weight bitsandbytes keeps
    outside autograd's saved tensors.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, product: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if getattr(weight, "quant_state", None) is None:
            device = weight.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            ctx.save_for_backward(weight.to(dtype).t())
        return product

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> None:
        raise RuntimeError("ReplayLinear: a recomputed graph ran backward; use non-reentrant checkpointing.")


class ReplayLinear:
    """Mixin for a frozen linear layer (bitsandbytes 4-bit or plain) that keeps its products.

    :func:`use_replay_linears` puts it in front of the layer's own class; the layer's
    weights and state dict are untouched.
    """

    replay: ReplayQueue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        if in_backward():
            return _KeptProduct.apply(x, self.replay.take(), self.weight)
        product = super().forward(x)
        self.replay.keep(product.detach())
        return product


def replayable(layer: nn.Module) -> bool:
    """Whether :class:`ReplayLinear` can keep the products of ``layer``: a frozen 4-bit or plain linear layer."""
    import bitsandbytes as bnb  # imported here: loading it probes CUDA and prints notes

    frozen = not any(p.requires_grad for p in layer.parameters())
    return frozen and type(layer) in (nn.Linear, bnb.nn.Linear4bit)


@cache
def _replay_class(layer_class: type[nn.Module]) -> type[nn.Module]:
    return type(f"Replay{layer_class.__name__}", (ReplayLinear, layer_class), {})


def adapted_base_layers(model: nn.Module) -> list[nn.Module]:
    """The layers under ``model``'s LoRA adapters: those selective checkpointing keeps the outputs of."""
    from peft.tuners.lora import LoraLayer

    return [layer.get_base_layer() for layer in model.modules() if isinstance(layer, LoraLayer)]


def masked_inputs(model: nn.Module) -> int:
    """Input features of the layers whose LoRA dropout draws a mask, summed: mask elements per token.

    Checkpointing on CPU keeps each mask (one byte an element) until its replay.
    """
    from peft.tuners.lora import LoraLayer

    return sum(
        layer.get_base_layer().in_features
        for layer in model.modules()
        if isinstance(layer, LoraLayer) and any(getattr(d, "p", 0.0) > 0 for d in layer.lora_dropout.values())
    )


def allows_selective(model: nn.Module) -> bool:
    """Whether selective checkpointing can keep the outputs of every layer under ``model``'s adapters."""
    return all(replayable(layer) for layer in adapted_base_layers(model))


def use_replay_linears(layers: Iterable[nn.Module]) -> list[ReplayQueue]:
    """Make each of ``layers`` a :class:`ReplayLinear`; each must be :func:`replayable`.

    Returns:
        Their queues, to reset before each micro-batch.
    """
    queues = []
    for layer in layers:
        if not replayable(layer):
            raise ValueError(f"ReplayLinear: {type(layer).__name__} is not a frozen 4-bit or plain linear layer.")
        layer.__class__ = _replay_class(type(layer))
        layer.replay = ReplayQueue(f"ReplayLinear({layer.in_features} -> {layer.out_features})")
        queues.append(layer.replay)
    return queues


def use_replay_dropout(model: nn.Module, replay: bool = True) -> list[ReplayQueue]:
    """Put :class:`ReplayDropout` in place of every PEFT LoRA dropout of ``model`` with ``p > 0``.

    Args:
        model: The PEFT model.
        replay: Whether checkpointing will recompute the dropouts (see :class:`ReplayDropout`).

    Returns:
        The new modules' queues (none without ``replay``), to reset before each micro-batch.
    """
    queues = []
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = ReplayDropout(dropout.p, replay)
                if replay:
                    queues.append(dropouts[name].replay)
    return queues
