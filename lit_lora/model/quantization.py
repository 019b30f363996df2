"""How the frozen base weights are stored: bitsandbytes 4-bit, 8-bit, or not quantized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import BitsAndBytesConfig

DTypeName = Literal["auto", "bfloat16", "float16", "float32"]


def resolve_dtype(name: DTypeName) -> torch.dtype:
    """Turn a dtype name into a ``torch.dtype``; ``auto`` picks what the hardware runs fastest.

    ``auto`` is bfloat16 on CUDA devices that support it, float16 on older CUDA
    devices, and float32 on CPU, where half-precision matmuls are emulated and slow.
    """
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(frozen=True)
class QuantizationSettings:
    """Storage of the frozen base model's linear layers (QLoRA when 4-bit).

    Args:
        mode: ``nf4`` (4-bit NormalFloat, the QLoRA default: best accuracy per bit for
            normally distributed weights), ``fp4`` (4-bit float), ``int8`` (LLM.int8()),
            or ``none`` (keep the weights in ``compute_dtype``: plain LoRA).
        double_quant: 4-bit only: also quantize the per-block scales, saving about
            0.4 bits per parameter (~3 GB on a 65B model) at no measurable cost.
        compute_dtype: dtype the 4-bit weights are dequantized to for each matmul, and
            the dtype of the non-quantized weights; ``auto`` is bfloat16 on CUDA with
            bf16 support, float16 on other CUDA devices, float32 on CPU.
        quant_storage: 4-bit only: dtype the packed weights are stored in. Set it to
            the compute dtype (e.g. ``bfloat16``) when FSDP must shard the quantized
            weights together with the others.
    """

    mode: Literal["nf4", "fp4", "int8", "none"] = "nf4"
    double_quant: bool = True
    compute_dtype: DTypeName = "auto"
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"

    @property
    def quantized(self) -> bool:
        """Whether the base weights are quantized at all."""
        return self.mode != "none"

    def to_bnb_config(self) -> BitsAndBytesConfig | None:
        """The transformers ``BitsAndBytesConfig`` for this setting, or None when not quantized."""
        if self.mode == "none":
            return None
        if self.mode == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.mode,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=resolve_dtype(self.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, self.quant_storage),
        )
