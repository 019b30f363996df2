"""lit_lora: LoRA and QLoRA fine-tuning of Hugging Face causal LMs with PyTorch Lightning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_lora.lazy import lazy_attributes

if TYPE_CHECKING:
    from lit_lora.model import (
        ClassificationModule,
        DPOModule,
        LoRAModule,
        LoRASettings,
        QuantizationSettings,
    )
    from lit_lora.training.optim import LRSchedule

# Imported on first use, so that `python -m lit_lora` sets its process up
# (lit_lora.training.heap) before torch and the model stack are loaded.
_EXPORTS = {
    "ClassificationModule": "lit_lora.model",
    "DPOModule": "lit_lora.model",
    "LoRAModule": "lit_lora.model",
    "LoRASettings": "lit_lora.model",
    "QuantizationSettings": "lit_lora.model",
    "LRSchedule": "lit_lora.training.optim",
}
__all__ = ["ClassificationModule", "DPOModule", "LRSchedule", "LoRAModule", "LoRASettings", "QuantizationSettings"]
__getattr__ = lazy_attributes(__name__, _EXPORTS)
