"""Export of the trained adapter in PEFT's own format at the end of ``fit``."""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_lora.artifacts.adapter_dir import MODEL_CARD, TRAINING_CONFIG, publish_adapter_dir
from lit_lora.artifacts.atomic import fsync_tree, partial_path
from lit_lora.artifacts.model_card import model_card, training_config_text
from lit_lora.training.strategies import whole_trainable_weights


class AdapterExport(Callback):
    """Save the adapter so that ``PeftModel.from_pretrained(base, <dir>)`` loads it.

    Writes ``adapter_model.safetensors``, ``adapter_config.json``, the tokenizer files,
    ``training_config.yaml`` (the run's configuration) and a model card ``README.md``
    into ``<trainer.default_root_dir>/<dirname>`` when fitting ends (also after a
    resumed fit), from the weights the module holds at that point. The folder appears
    complete or not at all, and an adapter already there is kept as ``<dirname>.<n>``;
    both are described in :mod:`lit_lora.artifacts.adapter_dir`.

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
                target = self.directory(trainer)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = partial_path(target, hidden=True)
                try:
                    pl_module.save_adapter(staging)
                    (staging / TRAINING_CONFIG).write_text(training_config_text(trainer, pl_module))
                    # Replaces PEFT's template card, which is all placeholders.
                    (staging / MODEL_CARD).write_text(model_card(trainer, pl_module, target))
                    fsync_tree(staging)
                    kept = publish_adapter_dir(staging, target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                rank_zero_info(f"lit_lora: adapter saved to {target}")
                if kept is not None:
                    rank_zero_info(f"lit_lora: the adapter that was in {target} before is kept, as {kept}")
        trainer.strategy.barrier("adapter_export")
