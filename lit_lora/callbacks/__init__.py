"""Callbacks: training diagnostics, PEFT adapter export, the before/after generation preview, the prediction file."""

from lit_lora.callbacks.diagnostics import TrainingDiagnostics
from lit_lora.callbacks.export import AdapterExport
from lit_lora.callbacks.generation import GenerationPreview
from lit_lora.callbacks.predictions import PredictionWriter

__all__ = ["AdapterExport", "GenerationPreview", "PredictionWriter", "TrainingDiagnostics"]
