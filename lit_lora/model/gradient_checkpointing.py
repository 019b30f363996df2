"""Gradient checkpointing of a PEFT model: which layers recompute in backward, and what they replay.

The mode (``model.gradient_checkpointing``) is decided before this runs, by the memory
plan (``lit_lora.training.planning``); this module applies it to a built model.
"""

from __future__ import annotations

from typing import Literal

from peft import PeftModel
from transformers.modeling_layers import GradientCheckpointingLayer

from lit_lora.errors import ConfigError
from lit_lora.model.quantization import QuantizationSettings
from lit_lora.model.replay import (
    ReplayQueue,
    adapted_base_layers,
    allows_selective,
    use_replay_dropout,
    use_replay_linears,
)
from lit_lora.training.heap import trim_before_layers


def check_checkpointing_setting(setting: bool | str, quantization: QuantizationSettings) -> None:
    """Refuse a ``model.gradient_checkpointing`` setting the quantization cannot serve, before any model loads.

    Raises:
        ConfigError: ``selective`` with an 8-bit base, whose layers' outputs it cannot keep.
    """
    if setting == "selective" and quantization.mode == "int8":
        raise ConfigError(
            "model.gradient_checkpointing: selective keeps the outputs of 4-bit or unquantized base layers, "
            "not of 8-bit ones; set quantization.mode: nf4, or gradient_checkpointing: true."
        )


def check_selective(model: PeftModel, setting: bool | str) -> bool:
    """Whether ``model`` allows selective checkpointing, refusing a ``selective`` setting it does not allow.

    Args:
        model: The PEFT model.
        setting: ``model.gradient_checkpointing`` as configured.

    Raises:
        ConfigError: ``setting`` is ``selective`` and some adapted base layer is not a
            frozen 4-bit or plain linear layer.
    """
    selective = allows_selective(model)
    if setting == "selective" and not selective:
        raise ConfigError(
            "model.gradient_checkpointing: selective needs every adapted base layer frozen (lora.bias: none) "
            "and 4-bit or unquantized; set gradient_checkpointing: true."
        )
    return selective


def enable_gradient_checkpointing(
    model: PeftModel, mode: bool | Literal["selective"], checkpointed_layers: int | None = None
) -> list[ReplayQueue]:
    """Apply a decided checkpointing mode to ``model``, and the replays that go with it.

    On CPU, PEFT's LoRA dropouts are replaced by ones that draw their masks faster and,
    with checkpointing, replay them in the recomputation (``lit_lora.model.replay``).
    ``selective`` also replays the frozen base layers' outputs. ``True`` on CPU hands
    freed heap pages back before each layer (``lit_lora.training.heap``): that mode is
    the choice for memory.

    Args:
        model: The PEFT model, already on its device.
        mode: ``False``, ``True`` or ``"selective"`` (``auto`` resolved beforehand).
        checkpointed_layers: How many decoder layers to checkpoint, the first ones
            (None: all); the others keep their activations, and run as without
            checkpointing. Any of them would free as much; the first ones' activations
            would otherwise live longest.

    Returns:
        The replay queues, to reset before each micro-batch.
    """
    cpu = next(model.parameters()).device.type == "cpu"
    base = model.get_base_model()
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    checkpointed = layers[:checkpointed_layers] if mode else []
    if mode and not layers:
        # Layers transformers does not mark as checkpointable: its own choice, whole.
        checkpointed = [base]
    replays = []
    if cpu:
        # Replaying dropouts first: the second call finds only the other layers' PEFT dropouts.
        for layer in checkpointed:
            replays += use_replay_dropout(layer, replay=True)
        use_replay_dropout(model, replay=False)
    if not checkpointed:
        return replays
    # Non-reentrant checkpointing propagates gradients to the adapters of a frozen
    # base without forcing the input embeddings to require grad.
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    for layer in layers[len(checkpointed) :]:
        layer.gradient_checkpointing = False
    if cpu and mode is True:
        trim_before_layers(checkpointed)
    if mode == "selective":
        replays += use_replay_linears(base_layer for layer in checkpointed for base_layer in adapted_base_layers(layer))
    return replays
