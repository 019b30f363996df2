"""The command line: ``python -m lit_lora`` and ``lit-lora``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's; ``merge``,
``generate`` and ``evaluate`` are lit_lora's own (:mod:`lit_lora.commands`).

Everything is configured through YAML files and ``--section.option`` overrides,
which LightningCLI maps onto the constructor arguments of the trainer, the
LightningModule (``model``), the LightningDataModule (``data``) and the callbacks
below. ``model`` and ``data`` accept any subclass through ``class_path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_lora.artifacts.adapter_dir import is_adapter_dir
from lit_lora.artifacts.checkpoint_file import check_run_sources
from lit_lora.artifacts.checkpoint_io import keep_atomic_writer
from lit_lora.artifacts.tokenizer import tokenizer_source
from lit_lora.callbacks.diagnostics import TrainingDiagnostics
from lit_lora.callbacks.export import AdapterExport
from lit_lora.callbacks.predictions import PredictionWriter
from lit_lora.callbacks.preemption import Preemption
from lit_lora.callbacks.progress import RunProgressBar
from lit_lora.commands import COMMANDS, run_command
from lit_lora.errors import ConfigError
from lit_lora.model.quantization import resolve_dtype
from lit_lora.training import run_lock
from lit_lora.training.strategies import check_strategy


def default_precision() -> str:
    """bf16 mixed precision where the hardware has it, full float32 elsewhere."""
    import torch

    return "bf16-mixed" if resolve_dtype("auto") == torch.bfloat16 else "32-true"


class LitLoraCLI(LightningCLI):
    """LightningCLI with lit_lora's defaults, checkpointing, adapter export, prediction file and links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Checkpoints hold only the adapter, so keeping one per epoch is cheap and the
        # best epoch is rarely the last. Step checkpoints bound what a crash costs inside
        # a long epoch; only the newest few are kept. Both write ``last.ckpt``, which
        # ``--ckpt_path last`` resumes, so neither may rename it to ``last-v1.ckpt``.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "step_checkpoint")
        # ``best.ckpt``: the lowest val/loss so far, the one to keep when the run overfits.
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_top_k": -1,
                "checkpoint.save_last": True,
                "checkpoint.every_n_epochs": 1,
                "checkpoint.filename": "epoch{epoch:02d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.enable_version_counter": False,
                "step_checkpoint.every_n_train_steps": 100,
                "step_checkpoint.save_top_k": 2,
                "step_checkpoint.monitor": "step",
                "step_checkpoint.mode": "max",
                "step_checkpoint.save_last": True,
                "step_checkpoint.filename": "step{step}",
                "step_checkpoint.auto_insert_metric_name": False,
                "step_checkpoint.enable_version_counter": False,
                "best_checkpoint.monitor": "val/loss",
                "best_checkpoint.mode": "min",
                "best_checkpoint.save_top_k": 1,
                "best_checkpoint.filename": "best",
                "best_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(TrainingDiagnostics, "diagnostics")
        parser.add_lightning_class_args(AdapterExport, "export")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        # Last of the callbacks but the checkpoints (which Lightning runs after all others):
        # a preempted run's last.ckpt holds what a step checkpoint at that step would.
        parser.add_lightning_class_args(Preemption, "preemption")
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
        # Logs go under the run's folder whichever logger is chosen (CSV, TensorBoard,
        # W&B all take save_dir); as a link it stays out of the saved config, which then
        # follows ``trainer.default_root_dir`` like the checkpoints do.
        parser.link_arguments(
            "trainer.default_root_dir", "trainer.logger.init_args.save_dir", compute_fn=lambda root: root or os.getcwd()
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        # The config alone first: a strategy that cannot run is refused before the disk is touched.
        check_strategy(config.trainer, config.model.init_args.as_dict(), config.data.get("init_args", {}))
        folder = checkpoint_folder(config)
        # Locked next, so that no other writer can start between the check below and training.
        run_lock.acquire_all({"trainer.default_root_dir": run_folder(config), "checkpoint.dirpath": folder})
        check_run_sources(self.subcommand, config, folder)
        if self.subcommand == "fit" and config.ckpt_path is None and any(folder.glob("*.ckpt")):
            raise ConfigError(
                f"checkpoint.dirpath: {folder} already holds checkpoints of an earlier run, which this run "
                "would overwrite. Resume it with --ckpt_path last, or set another trainer.default_root_dir."
            )
        self._adapter_as_ckpt_path(config)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        # Lightning's default folder is the logger's, which has a new ``version_N`` per
        # run: ``--ckpt_path last`` in the next run would look in an empty folder, find
        # nothing and silently train from scratch. Set on the callbacks, not in the
        # config, so that the saved config still follows ``trainer.default_root_dir``.
        folder = checkpoint_folder(self.config[self.subcommand])
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(folder)
        self._replace_default_progress_bar()
        keep_atomic_writer(self.trainer.strategy, self.config_init[self.subcommand].trainer.plugins or [])
        self._write_base_to_cache()

    def _write_base_to_cache(self) -> None:
        """Build a base that exists only as a recipe (``random_init``, a GGUF file) in the cache now.

        Once Lightning has started a process group, transformers writes a model's files
        only on global rank 0, and the process that fills a machine's cache is rank 0
        only on the first machine (and only when it comes first): elsewhere the cached
        folder would stay empty. No process group exists yet at this point.
        """
        from lit_lora.model import LoRAModule
        from lit_lora.model.loading import base_model_folder

        module = self.model
        if isinstance(module, LoRAModule):
            base_model_folder(module.model_name_or_path, module.gguf_file, module.random_init, module.seed)

    def _replace_default_progress_bar(self) -> None:
        """Put :class:`RunProgressBar` in place of the bar Lightning adds when none is configured.

        Lightning's default is Rich's bar when ``rich`` happens to be installed, else
        TQDM's; this bar is the same everywhere. A bar in ``trainer.callbacks``, or
        ``trainer.enable_progress_bar: false``, is left as it is.
        """
        bar = self.trainer.progress_bar_callback
        configured = self.config_init[self.subcommand].trainer.callbacks or []
        if bar is None or any(callback is bar for callback in configured):
            return
        callbacks = self.trainer.callbacks
        callbacks[callbacks.index(bar)] = RunProgressBar()

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given when resuming (LightningCLI would re-parse it).

        LightningCLI reads the checkpoint's hyperparameters back into ``model``, over
        the YAML and the command line: the optimizer, which is not a hyperparameter,
        fell back to its default, and a lower learning rate for resuming a diverged
        run was discarded. The config flows one way; a checkpoint whose adapter does
        not fit it is refused by ``LoRAModule.on_load_checkpoint``.
        """

    def _adapter_as_ckpt_path(self, config: Namespace) -> None:
        """Let ``validate``/``test``/``predict`` take a PEFT adapter folder as ``--ckpt_path``.

        The run's base must be the one the adapter was trained on (the base and
        quantization in its ``training_config.yaml``), else it is refused with both
        values and the fix: the config is what the run builds and saves.
        """
        from lit_lora.model.pretrained import check_configured_base

        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or not is_adapter_dir(ckpt_path):
            return
        if self.subcommand == "fit":
            raise ConfigError(
                f"ckpt_path: '{ckpt_path}' is an adapter folder, which holds no optimizer or loop state "
                "to resume. To train on from it, set model.init_args.adapter_path to it instead."
            )
        init_args = config.model.init_args
        if init_args.adapter_path not in (None, ckpt_path):
            raise ConfigError(
                f"ckpt_path: '{ckpt_path}' and model.init_args.adapter_path: '{init_args.adapter_path}' name "
                "two adapters; keep one."
            )
        check_configured_base(Path(ckpt_path), init_args.as_dict())
        init_args.adapter_path = ckpt_path
        config.ckpt_path = None


def run_folder(config: Namespace) -> Path:
    """The run's folder: ``trainer.default_root_dir``, else the working directory (as Lightning has it)."""
    return Path(config.trainer.default_root_dir or os.getcwd())


def checkpoint_folder(config: Namespace) -> Path:
    """Where checkpoints go: ``checkpoint.dirpath``, else ``<default_root_dir>/checkpoints``."""
    if config.checkpoint.dirpath is not None:
        return Path(config.checkpoint.dirpath)
    return run_folder(config) / "checkpoints"


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
    finally:
        run_lock.release_all()


class ConfigOnlyCLI(LitLoraCLI):
    """Parses and validates a config with every default and link, and builds nothing.

    The run-time checks (the run folder's lock, a checkpoint folder an earlier run filled) are skipped too:
    what is looked at is the config, not the state of the disk. For commands that
    read a ``fit`` command line (``estimate``) and for tests.
    """

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def build_cli(args: ArgsType = None, run: bool = True, cli_class: type[LitLoraCLI] = LitLoraCLI) -> LitLoraCLI:
    """A LitLoraCLI (or ``cli_class``, a subclass) with lit_lora's module, data module and defaults.

    A Lightning command holds its run folder's lock (:mod:`lit_lora.training.run_lock`)
    from before anything is built; :func:`main` releases it when the command ends.
    """
    from lightning.pytorch import LightningDataModule

    from lit_lora.model import LoRAModule
    from lit_lora.training.heap import RESTART_NOTE, TRAINING_COMMANDS

    return cli_class(
        LoRAModule,
        # Any data module: SFT, classification and preference data share no base beyond this.
        LightningDataModule,
        # ``fit --help`` and the like say how the process restarts with glibc's heap settings.
        parser_kwargs={command: {"description": RESTART_NOTE} for command in TRAINING_COMMANDS},
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
            # The data modules shard their loaders over devices themselves, keeping the
            # training order; Lightning's DistributedSampler would replace it.
            "use_distributed_sampler": False,
            # Lightning would pick TensorBoard when it happens to be installed; CSV needs
            # nothing and ``plot`` reads it. ``save_dir`` is linked to default_root_dir.
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"},
        },
        args=args,
        run=run,
    )


__all__ = ["LitLoraCLI", "build_cli", "main"]
