"""What a LoRA checkpoint holds: only the trained weights, checked against the adapter on load."""

from __future__ import annotations

from typing import Any

import torch

from lit_lora.errors import ConfigError


def trainable_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """The shapes of ``module``'s trainable parameters, by state-dict name."""
    return {name: p.shape for name, p in module.named_parameters() if p.requires_grad}


def trained_state(state_dict: dict[str, Any], shapes: dict[str, torch.Size]) -> dict[str, Any]:
    """Keep only the entries of ``state_dict`` named in ``shapes``: a few MB instead of the frozen base.

    Args:
        state_dict: The module's full state dict.
        shapes: The trainable parameters, as from :func:`trainable_shapes`.
    """
    return {k: v for k, v in state_dict.items() if k in shapes}


def check_adapter_shapes(expected: dict[str, torch.Size], found: dict[str, torch.Size]) -> None:
    """Refuse a checkpoint whose trained weights differ from the adapter's in names or shapes.

    Args:
        expected: The adapter's trainable parameters, as from :func:`trainable_shapes`.
        found: The checkpoint's weights and their shapes.

    Raises:
        ConfigError: When they differ, with an example of each kind of difference.
    """
    if expected == found:
        return
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(n for n in expected.keys() & found.keys() if expected[n] != found[n])
    raise ConfigError(
        "The checkpoint's adapter does not match model.lora / model.quantization: "
        f"{len(missing)} trained weights missing (e.g. {missing[:1]}), {len(unexpected)} unexpected "
        f"(e.g. {unexpected[:1]}), {len(reshaped)} of another shape (e.g. {reshaped[:1]}). "
        "Resume with the settings the checkpoint was trained with."
    )
