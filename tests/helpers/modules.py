"""Tiny LoRA modules built in code, the batches they train on, and their LoRA gradients."""

from __future__ import annotations

import torch

from lit_lora import LoRAModule, LoRASettings, QuantizationSettings
from lit_lora.model.loading import base_model_folder, load_base_model


def build(tiny_model_dir, device: str = "cpu", **kwargs) -> LoRAModule:
    kwargs.setdefault("quantization", QuantizationSettings(mode="none"))
    kwargs.setdefault("lora", LoRASettings(r=4, alpha=8, dropout=0.0, init_lora_weights=False))
    module = LoRAModule(str(tiny_model_dir), random_init=True, **kwargs)
    if device != "cpu":
        # No Trainer to take the device from: load the base where asked, as fit does there.
        folder = base_model_folder(module.model_name_or_path, module.gguf_file, module.random_init, module.seed)
        module.build_base_model = lambda: load_base_model(
            folder, module.quantization, torch.device(device), module.attn_implementation
        )
    torch.manual_seed(0)  # LoRA matrices are initialised from the global generator
    module.configure_model()
    return module


def batch(
    seed: int, rows: int, length: int, supervised: list[int], vocab: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """A batch whose row ``i`` is trained on its last ``supervised[i]`` positions, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    labels = torch.full_like(input_ids, -100)
    for i, n in enumerate(supervised):
        labels[i, length - n :] = input_ids[i, length - n :]
    data = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {key: value.to(device) for key, value in data.items()}


def lora_grads(module: LoRAModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
