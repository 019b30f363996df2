"""Tiny LoRA modules built in code, the batches they train on, and their LoRA gradients."""

from __future__ import annotations

import torch

from lit_lora import LoRAModule, LoRASettings, QuantizationSettings


def build(tiny_model_dir, **kwargs) -> LoRAModule:
    kwargs.setdefault("quantization", QuantizationSettings(mode="none"))
    kwargs.setdefault("lora", LoRASettings(r=4, alpha=8, dropout=0.0, init_lora_weights=False))
    module = LoRAModule(str(tiny_model_dir), random_init=True, **kwargs)
    torch.manual_seed(0)  # LoRA matrices are initialised from the global generator
    module.configure_model()
    return module


def batch(seed: int, rows: int, length: int, supervised: list[int], vocab: int) -> dict[str, torch.Tensor]:
    """A batch whose row ``i`` is trained on its last ``supervised[i]`` positions."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    labels = torch.full_like(input_ids, -100)
    for i, n in enumerate(supervised):
        labels[i, length - n :] = input_ids[i, length - n :]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def lora_grads(module: LoRAModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
