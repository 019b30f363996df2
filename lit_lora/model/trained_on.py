"""What an adapter was trained on, recorded in every checkpoint and compared before a run builds anything.

An adapter only means something on the weights it was trained on, stored as they
were: a resume (``fit --ckpt_path``) or an evaluation (``validate``/``test``/``predict
--ckpt_path x.ckpt``) on another base, GGUF file, random-weights seed, quantization or
LoRA shape would train or measure something else, and the adapter's tensors often
have the same shapes on it. Each checkpoint therefore holds, under
:data:`RECORD_KEY`, an explicit record (format :data:`RECORD_FORMAT`)::

    {"format": 1, "lit_lora_version": "0.1.0",
     "settings": {"model_name_or_path": ..., "gguf_file": ..., "random_init": ...,
                  "seed": ... (random weights only), "tokenizer_name_or_path": ...,
                  "quantization.mode": ..., ..., "lora.r": ..., ...
                  or "adapter_path": ..., "adapter_config.r": ..., ...}}

keyed by the names of the ``model.init_args`` settings, so a difference names the
option to set. Checkpoints written before the record existed are compared through
the module's init arguments that Lightning stores as ``hyper_parameters``.

``lora.dropout`` and ``lora.init_lora_weights`` are recorded but not compared: the
first does not change what a trained adapter computes and may be changed on resume
like the learning rate, the second is overwritten by the restored weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from lit_lora.artifacts.adapter_dir import ADAPTER_CONFIG, TRAINING_CONFIG, BaseModelSpec
from lit_lora.errors import ConfigError
from lit_lora.model.lora import LoRASettings

RECORD_KEY = "lit_lora_trained_on"
RECORD_FORMAT = 1
FIELD = "model.init_args"

NOT_COMPARED = frozenset({"lora.dropout", "lora.init_lora_weights"})
# What of an ``adapter_path``'s PEFT config decides the adapter's shape and scale.
ADAPTER_CONFIG_KEYS = (
    "r",
    "lora_alpha",
    "target_modules",
    "bias",
    "layers_to_transform",
    "modules_to_save",
    "use_dora",
    "use_rslora",
)

Difference = tuple[str, Any, Any]


def base_settings(spec: BaseModelSpec) -> dict[str, Any]:
    """The settings that decide the base's weights and storage, by their config names.

    Args:
        spec: The base, as an adapter records it or a run configures it.
    """
    settings = {
        "model_name_or_path": spec.model_name_or_path,
        "gguf_file": spec.gguf_file,
        "random_init": spec.random_init,
        "tokenizer_name_or_path": spec.tokenizer_name_or_path,
    }
    if spec.random_init:
        settings["seed"] = spec.seed
    settings.update({f"quantization.{name}": value for name, value in dataclasses.asdict(spec.quantization).items()})
    return settings


def trained_settings(init_args: Mapping[str, Any]) -> dict[str, Any]:
    """The base and adapter settings of a module's init arguments, as plain values.

    Args:
        init_args: ``model.init_args`` of a config, or a module's ``hparams``; nested
            settings as dicts or as their dataclasses.
    """
    args = {
        name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        for name, value in init_args.items()
    }
    settings = base_settings(BaseModelSpec.of_init_args(args, source=FIELD))
    adapter = args.get("adapter_path")
    if adapter is None:
        lora = dataclasses.asdict(LoRASettings(**(args.get("lora") or {})))
        settings.update({f"lora.{name}": value for name, value in lora.items()})
        return settings
    settings["adapter_path"] = str(adapter)
    config_file = Path(adapter).expanduser() / ADAPTER_CONFIG
    peft = json.loads(config_file.read_text()) if config_file.is_file() else {}
    settings.update({f"adapter_config.{key}": peft.get(key) for key in ADAPTER_CONFIG_KEYS})
    return settings


def lit_lora_version() -> str:
    """The installed lit_lora's version ("unknown" when running from an uninstalled tree)."""
    try:
        return version("lit_lora")
    except PackageNotFoundError:
        return "unknown"


def store_record(checkpoint: dict[str, Any], hparams: Mapping[str, Any]) -> None:
    """Write what the module trains on into a checkpoint being saved.

    Args:
        checkpoint: The checkpoint dict Lightning is about to write.
        hparams: The module's init arguments (``LightningModule.hparams``).
    """
    checkpoint[RECORD_KEY] = {
        "format": RECORD_FORMAT,
        "lit_lora_version": lit_lora_version(),
        "settings": trained_settings(hparams),
    }


def recorded_settings(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """What a checkpoint was trained on: its record, else its ``hyper_parameters``; None when neither.

    Args:
        checkpoint: A loaded checkpoint.
        path: Its file, named in errors.

    Raises:
        ConfigError: The record is of a format this lit_lora does not know.
    """
    record = checkpoint.get(RECORD_KEY)
    if record is not None:
        if record.get("format") != RECORD_FORMAT:
            raise ConfigError(
                f"ckpt_path: {path} was written by lit_lora {record.get('lit_lora_version')} with a record of "
                f"format {record.get('format')}; this lit_lora ({lit_lora_version()}) reads format {RECORD_FORMAT}. "
                "Fix: resume or evaluate it with the lit_lora version that wrote it."
            )
        return dict(record["settings"])
    hparams = checkpoint.get("hyper_parameters") or {}
    return trained_settings(hparams) if "model_name_or_path" in hparams else None


def differences(trained: Mapping[str, Any], configured: Mapping[str, Any]) -> list[Difference]:
    """``(name, trained value, configured value)`` of each recorded setting this run sets otherwise.

    Args:
        trained: The settings recorded with the adapter or checkpoint.
        configured: The same settings of this run.
    """
    return [
        (name, was, configured.get(name))
        for name, was in trained.items()
        if name not in NOT_COMPARED and not same(was, configured.get(name))
    ]


def base_differences(adapter_dir: Path, init_args: Mapping[str, Any]) -> list[Difference]:
    """How this run's base differs from the one in an adapter folder's ``training_config.yaml``.

    Args:
        adapter_dir: An adapter folder holding ``training_config.yaml``.
        init_args: The run's ``model.init_args``, as plain values.
    """
    trained = base_settings(BaseModelSpec.of_adapter(adapter_dir))
    return differences(trained, base_settings(BaseModelSpec.of_init_args(init_args, source=FIELD)))


def listed(found: list[Difference]) -> str:
    """The differences as a sentence: ``model.init_args.X is A there, B here; ...``."""
    return "; ".join(f"{FIELD}.{name} is {cli_value(was)} there, {cli_value(now)} here" for name, was, now in found)


def overrides(found: list[Difference]) -> str:
    """The command-line options that set the recorded values back (what an adapter's PEFT config says is no option)."""
    return " ".join(
        f"--{FIELD}.{name} {cli_value(was)}" for name, was, _ in found if not name.startswith("adapter_config.")
    )


def check_checkpoint_settings(path: str | Path, checkpoint: Mapping[str, Any], init_args: Mapping[str, Any]) -> None:
    """Refuse a checkpoint trained on other base, quantization or adapter settings than this run's.

    Args:
        path: The checkpoint file, named in the error.
        checkpoint: The loaded checkpoint.
        init_args: The run's ``model.init_args``, as plain values.

    Raises:
        ConfigError: A recorded setting differs, naming both values and the fix.
    """
    trained = recorded_settings(checkpoint, path)
    if trained is None:
        return
    found = differences(trained, trained_settings(init_args))
    if found:
        raise ConfigError(
            f"ckpt_path: {path} was trained on other settings than this run configures: {listed(found)}. "
            f"Fix: set {overrides(found) or 'them as they were'} (what the checkpoint was trained with), or "
            "train a new run without --ckpt_path in another trainer.default_root_dir."
        )


def adapter_base_warning(init_args: Mapping[str, Any]) -> str | None:
    """The warning for a ``model.adapter_path`` trained on another base or quantization, if it was.

    Continuing on another quantization (or base) can be deliberate, so this is a
    warning with both values, not an error. An adapter without
    ``training_config.yaml`` records no base and is not compared.

    Args:
        init_args: The run's ``model.init_args``, as plain values.
    """
    adapter = init_args.get("adapter_path")
    if adapter is None or not (Path(adapter).expanduser() / TRAINING_CONFIG).is_file():
        return None
    found = base_differences(Path(adapter).expanduser(), init_args)
    if not found:
        return None
    return (
        f"lit_lora: {FIELD}.adapter_path '{adapter}' was trained on another base than this run's: {listed(found)}. "
        f"Training goes on from it on this run's base; if that is not deliberate, set {overrides(found)}."
    )


def same(trained: Any, configured: Any) -> bool:
    """Equal settings; a local folder named by another path (relative, absolute) is the same."""
    if trained == configured:
        return True
    paths = [Path(str(value)).expanduser() for value in (trained, configured)]
    return (
        isinstance(trained, str)
        and isinstance(configured, str)
        and all(p.exists() for p in paths)
        and (paths[0].resolve() == paths[1].resolve())
    )


def cli_value(value: Any) -> str:
    """A setting as written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(cli_value(item) for item in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
