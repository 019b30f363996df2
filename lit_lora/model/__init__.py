"""The model side: base loading, quantization, LoRA, loss and the LightningModule."""

from lit_lora.model.classification import ClassificationModule
from lit_lora.model.lora import LoRASettings
from lit_lora.model.module import LoRAModule
from lit_lora.model.preference import DPOModule
from lit_lora.model.quantization import QuantizationSettings

__all__ = ["ClassificationModule", "DPOModule", "LoRAModule", "LoRASettings", "QuantizationSettings"]
