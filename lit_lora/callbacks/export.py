"""Export of the trained adapter in PEFT's own format at the end of ``fit``."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_lora.artifacts.adapter_dir import MODEL_CARD, TRAINING_CONFIG
from lit_lora.artifacts.model_card import model_card, training_config_text
from lit_lora.training.strategies import whole_trainable_weights


class AdapterExport(Callback):
    """Save the adapter so that ``PeftModel.from_pretrained(base, <dir>)`` loads it.

    Writes ``adapter_model.safetensors``, ``adapter_config.json``, the tokenizer files,
    ``training_config.yaml`` (the run's configuration) and a model card ``README.md``
    into ``<trainer.default_root_dir>/<dirname>`` when fitting ends (also after a
    resumed fit), from the weights the module holds at that point. The layout is
    described in :mod:`lit_lora.artifacts.adapter_dir`.

    Args:
        dirname: Folder name under ``trainer.default_root_dir``; an absolute path is
            used as it is.
    """

    def __init__(self, dirname: str = "adapter") -> None:
        self.dirname = dirname

    def directory(self, trainer: Trainer) -> Path:
        """Where the adapter is written for this trainer."""
        return Path(trainer.default_root_dir) / self.dirname

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with whole_trainable_weights(trainer.strategy, pl_module):
            if trainer.is_global_zero:
                path = pl_module.save_adapter(self.directory(trainer))
                (path / TRAINING_CONFIG).write_text(training_config_text(trainer, pl_module))
                # Replaces PEFT's template card, which is all placeholders.
                (path / MODEL_CARD).write_text(model_card(trainer, pl_module, path))
                rank_zero_info(f"lit_lora: adapter saved to {path}")
        trainer.strategy.barrier("adapter_export")
