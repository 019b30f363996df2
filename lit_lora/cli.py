"""The command line: ``python -m lit_lora`` and ``lit-lora``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's; ``merge``,
``generate`` and ``evaluate`` are lit_lora's own (:mod:`lit_lora.commands`).

Everything is configured through YAML files and ``--section.option`` overrides,
which LightningCLI maps onto the constructor arguments of the trainer, the
LightningModule (``model``), the LightningDataModule (``data``) and the callbacks
below. ``model`` and ``data`` accept any subclass through ``class_path``.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_lora.callbacks.export import AdapterExport
from lit_lora.commands import COMMANDS, run_command
from lit_lora.callbacks.predictions import PredictionWriter
from lit_lora.errors import ConfigError
from lit_lora.model.quantization import resolve_dtype
from lit_lora.tokenizer import tokenizer_source


def default_precision() -> str:
    """bf16 mixed precision where the hardware has it, full float32 elsewhere."""
    import torch

    return "bf16-mixed" if resolve_dtype("auto") == torch.bfloat16 else "32-true"


class LitLoraCLI(LightningCLI):
    """LightningCLI with lit_lora's defaults, checkpointing, adapter export, prediction file and links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Checkpoints hold only the adapter, so keeping one per epoch is cheap and the
        # best epoch is rarely the last; ``last.ckpt`` is what ``--ckpt_path`` resumes.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_top_k": -1,
                "checkpoint.save_last": True,
                "checkpoint.every_n_epochs": 1,
                "checkpoint.filename": "epoch{epoch:02d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(AdapterExport, "export")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        # The data module tokenizes with the model's tokenizer: the same files, by link.
        sources = (
            "model.init_args.model_name_or_path",
            "model.init_args.gguf_file",
            "model.init_args.tokenizer_name_or_path",
        )
        parser.link_arguments(
            sources, "data.init_args.tokenizer_name_or_path", compute_fn=lambda *args: tokenizer_source(*args)[0]
        )
        parser.link_arguments(sources, "data.init_args.gguf_file", compute_fn=lambda *args: tokenizer_source(*args)[1])


def config_error_in(error: BaseException) -> ConfigError | None:
    """The ConfigError behind ``error``, which jsonargparse wraps while instantiating."""
    while error is not None:
        if isinstance(error, ConfigError):
            return error
        error = error.__cause__ or error.__context__
    return None


def main(args: ArgsType = None, run: bool = True) -> Any:
    """Entry point of ``python -m lit_lora`` and the ``lit-lora`` script.

    A setting a user can fix ends the program with its message alone, exit status 2
    (as for an unknown option), rather than a traceback.
    """
    argv = sys.argv[1:] if args is None else args
    try:
        if isinstance(argv, list) and argv and argv[0] in COMMANDS:
            return run_command(argv[0], argv[1:])
        return build_cli(args, run)
    except Exception as error:
        cause = config_error_in(error)
        if cause is None:
            raise
        print(f"lit_lora: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from cause


def build_cli(args: ArgsType = None, run: bool = True) -> LitLoraCLI:
    """The LitLoraCLI with lit_lora's module, data module and trainer defaults."""
    from lit_lora.data import SFTDataModule
    from lit_lora.model import LoRAModule

    return LitLoraCLI(
        LoRAModule,
        SFTDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # The module builds its own optimizer from the trainable parameters only and
        # steps the schedule per optimizer step; LightningCLI's wiring would do neither.
        auto_configure_optimizers=False,
        seed_everything_default=42,
        trainer_defaults={
            "precision": default_precision(),
            "gradient_clip_val": 0.3,
            "accumulate_grad_batches": 4,
            "max_epochs": 3,
            "log_every_n_steps": 10,
        },
        args=args,
        run=run,
    )


__all__ = ["LitLoraCLI", "build_cli", "main"]
