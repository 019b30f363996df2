"""What an exported adapter says about itself: the run's config and a model card.

Both are written next to the PEFT files by
:class:`~lit_lora.callbacks.export.AdapterExport`, so the folder can be published,
served or reproduced without the run's log folder.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from lit_lora.artifacts.adapter_dir import TRAINING_CONFIG
from lit_lora.artifacts.redact import redact


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe builtins (settings dataclasses become mappings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def training_config_text(trainer: Trainer, module: LightningModule) -> str:
    """The YAML that reproduces the run: LightningCLI's full config when the run came
    from the command line, else the module's hyperparameters (Python API runs).

    ``ckpt_path`` is cleared: a resumed run is reproduced by a run from scratch.
    Credentials (a logger's ``api_key``...) are blanked, and a comment at the top names
    them (:mod:`lit_lora.artifacts.redact`): the folder is made to be published.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            config = callback.config.clone()
            if "ckpt_path" in config:
                config.ckpt_path = None
            text = callback.parser.dump(config, skip_none=False)
            break
    else:
        model = {
            "class_path": f"{type(module).__module__}.{type(module).__qualname__}",
            "init_args": _plain(dict(module.hparams)),
        }
        text = yaml.safe_dump({"model": model}, sort_keys=False)
    data, removed = redact(yaml.safe_load(text))
    if not removed:
        return text
    note = "".join(
        f"# {name}: removed (a credential); set it again, or through its environment variable, to rerun.\n"
        for name in removed
    )
    return note + yaml.safe_dump(data, sort_keys=False)


def _module_names(targets: str | set[str] | list[str]) -> str:
    # PEFT expands ``all-linear`` to full module paths; a card lists each kind once.
    if isinstance(targets, str):
        return targets
    return ", ".join(sorted({name.rsplit(".", 1)[-1] for name in targets}))


def _metrics(trainer: Trainer) -> dict[str, float]:
    return {name: float(value) for name, value in sorted(trainer.callback_metrics.items()) if value.numel() == 1}


def model_card(trainer: Trainer, module: LightningModule, directory: Path) -> str:
    """A README.md for the adapter in ``directory``: base, settings, results, how to use it.

    Args:
        trainer: The trainer that fitted ``module`` (for steps, batch and metrics).
        module: The fitted :class:`~lit_lora.model.base.LoRAModule`.
        directory: Where the adapter is written; named in the usage examples.
    """
    peft = module.model.peft_config[module.model.active_adapter]
    quantization = module.quantization
    data = trainer.datamodule
    micro_batch = getattr(data, "batch_size", None)
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    base = module.model_name_or_path + (f" (GGUF file `{module.gguf_file}`)" if module.gguf_file else "")
    tags = ["lit_lora", "lora"] + (["qlora"] if quantization.mode in ("nf4", "fp4") else [])
    front = {
        "base_model": module.model_name_or_path,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": tags,
    }

    rows = [
        ("Base model", base),
        (
            "Base weights while training",
            f"{quantization.mode}"
            + (f", double quantization {quantization.double_quant}" if quantization.mode in ("nf4", "fp4") else ""),
        ),
        ("LoRA rank / alpha / dropout", f"{peft.r} / {peft.lora_alpha} / {peft.lora_dropout}"),
        ("Target modules", _module_names(peft.target_modules)),
        ("Trained in full", ", ".join(sorted(peft.modules_to_save or [])) or "nothing"),
        ("DoRA / rsLoRA", f"{peft.use_dora} / {peft.use_rslora}"),
        ("Epochs / optimizer steps", f"{trainer.current_epoch} / {trainer.global_step}"),
        (
            "Batch (micro x accumulation x devices)",
            f"{micro_batch} x {trainer.accumulate_grad_batches} x {trainer.world_size}",
        ),
        (
            "Optimizer, peak learning rate",
            f"{type(optimizer).__name__}, {optimizer.defaults.get('lr')}" if optimizer else "none",
        ),
        (
            "Schedule",
            f"{module.scheduler.kind}, warmup ratio {module.scheduler.warmup_ratio}, "
            f"warmup steps {module.scheduler.warmup_steps}",
        ),
        ("Precision", str(trainer.precision)),
        ("Max sequence length", str(getattr(data, "max_length", "n/a"))),
    ]
    metrics = _metrics(trainer)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# LoRA adapter for {module.model_name_or_path}",
        "",
        "Trained with lit_lora (PyTorch Lightning, PEFT, bitsandbytes).",
        "",
    ]
    lines += ["## Training", "", "| Setting | Value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    lines += ["## Final metrics", ""]
    lines += [f"- `{name}`: {value:.6g}" for name, value in metrics.items()] or ["No metrics were logged."]
    if quantization.quantized:
        lines += [
            "",
            f"The adapter was trained against the {quantization.mode}-quantized base. Merged into the "
            "full-precision weights (`lit_lora merge`) it gives slightly different outputs than "
            "on the quantized base it was validated on.",
        ]
    lines += [
        "",
        "## Reproduce",
        "",
        f"From `{os.getcwd()}` (relative paths in the config resolve there), into a new folder:",
        "",
        f"    python -m lit_lora fit --config {directory / TRAINING_CONFIG} --trainer.default_root_dir <new folder>",
        "",
        "## Use",
        "",
        f"    python -m lit_lora generate --adapters {directory} --prompts 'Your question'",
        f"    python -m lit_lora validate --config {directory / TRAINING_CONFIG} --ckpt_path {directory}",
        f"    python -m lit_lora merge --adapter {directory} --output merged/",
        "",
        "With PEFT:",
        "",
        "    from peft import AutoPeftModelForCausalLM",
        f"    model = AutoPeftModelForCausalLM.from_pretrained('{directory}')",
        "",
        "With vLLM's LoRA support:",
        "",
        f"    vllm serve {module.model_name_or_path} --enable-lora --lora-modules adapter={directory}",
        "",
    ]
    return "\n".join(lines)
