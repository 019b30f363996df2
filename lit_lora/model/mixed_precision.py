"""What mixed precision changes on the adapted layers.

Under ``torch.autocast`` a plain ``nn.Linear`` takes a float32 input and returns the
autocast dtype (bfloat16 or float16), so the activations that the next ops keep for
backward are half-size. An adapted layer does not: PEFT casts the adapter's input
back to float32, and a bitsandbytes 4-bit base casts its product to its input's
dtype. Fed the float32 output of a norm, a LoRA layer therefore returns float32,
and the MLP's gate and up products, its activation and the dropout inputs are all
kept in float32: on SmolLM2-135M about a third of what a step without checkpointing
keeps for backward (``docs/benchmarks.md``).

:func:`run_adapters_in_autocast_dtype` casts each adapted layer's input once, at the
layer, to the autocast dtype; the base and the adapter then both run in it, as a
plain layer would under autocast. The residual stream stays float32: a layer's
half-precision output is added to it in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


def cast_input_to_autocast_dtype(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: a float32 first argument cast to the autocast dtype, while autocast is on."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return None
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    return (x.to(torch.get_autocast_dtype(device_type)), *args[1:])


def run_adapters_in_autocast_dtype(model: nn.Module) -> None:
    """Make every adapted layer of ``model`` run in the autocast dtype while autocast is on.

    Turns off PEFT's cast of adapter inputs to float32 and casts each adapted
    layer's float32 input to the autocast dtype (:func:`cast_input_to_autocast_dtype`).
    Outside autocast (evaluation in full precision, float32 training) nothing changes.

    Args:
        model: The PEFT model.
    """
    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.cast_input_dtype_enabled = False
            layer.register_forward_pre_hook(cast_input_to_autocast_dtype)
