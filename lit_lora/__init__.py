"""lit_lora: LoRA and QLoRA fine-tuning of Hugging Face causal LMs with PyTorch Lightning."""

from lit_lora.model import (
    ClassificationModule,
    DPOModule,
    LoRAModule,
    LoRASettings,
    QuantizationSettings,
)
from lit_lora.optim import LRSchedule

__all__ = ["ClassificationModule", "DPOModule", "LRSchedule", "LoRAModule", "LoRASettings", "QuantizationSettings"]
