"""What mixed precision changes on the adapted layers.

Under ``torch.autocast`` a plain ``nn.Linear`` takes a float32 input and returns the
autocast dtype (bfloat16 or float16). An adapted layer fed the float32 output of a
norm does not: a bitsandbytes 4-bit base casts its product to its input's dtype, so
the layer keeps its float32 input for backward (the base's and the adapter
dropout's) and returns float32.

:func:`cast_adapted_layers_for_autocast` casts each adapted layer's input once, at the
layer, to the autocast dtype, so the base, the dropout and the adapter all run on,
and keep, the half-size copy. The layer's output stays float32: the base's product is
widened before PEFT adds the adapter's, because a young adapter's contribution is far
below half a bfloat16 step of the base's output (8 mantissa bits) and rounding their
sum drops most of it, which costs validation loss (``docs/benchmarks.md``).
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


def widen_output_to_float32(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook: a half-precision product returned as float32, while autocast is on."""
    if not isinstance(output, torch.Tensor) or output.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not torch.is_autocast_enabled(output.device.type):
        return None
    return output.float()


def cast_adapted_layers_for_autocast(model: nn.Module) -> None:
    """Make every adapted layer of ``model`` take its input in the autocast dtype and add in float32.

    Turns off PEFT's cast of adapter inputs to float32, casts each adapted layer's
    float32 input to the autocast dtype (:func:`cast_input_to_autocast_dtype`) and
    widens its base layer's product to float32 (:func:`widen_output_to_float32`), so
    the adapter's contribution is added to it without rounding. Outside autocast
    (evaluation in full precision, float32 training) nothing changes.

    Args:
        model: The PEFT model.
    """
    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.cast_input_dtype_enabled = False
            layer.register_forward_pre_hook(cast_input_to_autocast_dtype)
            layer.get_base_layer().register_forward_hook(widen_output_to_float32)
