"""Export of the trained adapter in PEFT's own format at the end of ``fit``."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class AdapterExport(Callback):
    """Save the adapter so that ``PeftModel.from_pretrained(base, <dir>)`` loads it.

    Writes ``adapter_model.safetensors``, ``adapter_config.json`` and the tokenizer
    files into ``<trainer.default_root_dir>/<dirname>`` when fitting ends (also after
    a resumed fit), from the weights the module holds at that point.

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
        if trainer.is_global_zero:
            path = pl_module.save_adapter(self.directory(trainer))
            rank_zero_info(f"lit_lora: adapter saved to {path}")
        trainer.strategy.barrier("adapter_export")
