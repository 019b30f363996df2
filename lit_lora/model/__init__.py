"""The model side: base loading, quantization, LoRA, loss and the LightningModule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_lora.lazy import lazy_attributes

if TYPE_CHECKING:
    from lit_lora.model.base import LoRAModule
    from lit_lora.model.classification import ClassificationModule
    from lit_lora.model.lora import LoRASettings
    from lit_lora.model.preference import DPOModule
    from lit_lora.model.quantization import QuantizationSettings

# Imported on first use: a module that needs one submodule (the loss, the
# quantization settings) does not load the LightningModule and everything it imports.
_EXPORTS = {
    "ClassificationModule": "lit_lora.model.classification",
    "DPOModule": "lit_lora.model.preference",
    "LoRAModule": "lit_lora.model.base",
    "LoRASettings": "lit_lora.model.lora",
    "QuantizationSettings": "lit_lora.model.quantization",
}
__all__ = ["ClassificationModule", "DPOModule", "LoRAModule", "LoRASettings", "QuantizationSettings"]
__getattr__ = lazy_attributes(__name__, _EXPORTS)
