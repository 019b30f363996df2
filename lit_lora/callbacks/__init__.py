"""Callbacks: diagnostics, adapter export, the generation preview, the prediction file, stopping on preemption."""

from lit_lora.callbacks.diagnostics import TrainingDiagnostics
from lit_lora.callbacks.export import AdapterExport
from lit_lora.callbacks.generation import GenerationPreview
from lit_lora.callbacks.predictions import PredictionWriter
from lit_lora.callbacks.preemption import Preemption

__all__ = ["AdapterExport", "GenerationPreview", "PredictionWriter", "Preemption", "TrainingDiagnostics"]
