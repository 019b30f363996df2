"""Callbacks: PEFT adapter export and the before/after generation preview."""

from lit_lora.callbacks.export import AdapterExport
from lit_lora.callbacks.generation import GenerationPreview

__all__ = ["AdapterExport", "GenerationPreview"]
