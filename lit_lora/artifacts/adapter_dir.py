"""An exported adapter directory: what it holds, and how to rebuild its base model.

:class:`~lit_lora.callbacks.export.AdapterExport` writes, into one folder:

- ``adapter_config.json`` and ``adapter_model.safetensors``: the PEFT adapter, as
  ``PeftModel.from_pretrained`` and vLLM's LoRA support read it;
- the tokenizer files, chat template included, exactly as trained with;
- ``training_config.yaml``: the whole configuration of the run that trained it;
- ``README.md``: the model card.

The export is atomic: everything is written into a hidden side folder
(``.adapter.<pid>.<random>.partial``), synced to disk, and renamed onto its name,
so a run killed while exporting leaves the side folder and never a half adapter
under the final name. A folder counts as an adapter (:func:`is_adapter_dir`) only
when it holds both ``adapter_config.json`` and the adapter's weights, and its name
is not a side folder's. An adapter already at the name (an earlier run's, or this
run's before a resume) is never overwritten: it is renamed ``adapter.1`` (the next
free number), and the log says so.

``merge``, ``generate``, ``evaluate``, and ``validate``/``test`` with an adapter
directory, read the base model from ``training_config.yaml`` when it is there (so a
GGUF or random-weights base is rebuilt exactly), else from PEFT's
``base_model_name_or_path``; ``--base`` overrides both.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_lora.artifacts.atomic import PARTIAL_SUFFIX, fsync_folder
from lit_lora.artifacts.source import check_model_source
from lit_lora.errors import ConfigError
from lit_lora.model.quantization import QuantizationSettings

ADAPTER_CONFIG = "adapter_config.json"
# PEFT writes one of these: safetensors by default, a pickle with safe_serialization=False.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TRAINING_CONFIG = "training_config.yaml"
MODEL_CARD = "README.md"


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a complete PEFT adapter folder: its config and weights, not a side folder."""
    return _incomplete(Path(path)) is None


def _incomplete(path: Path) -> str | None:
    """What keeps ``path`` from being a complete adapter folder, or None when it is one."""
    if path.name.endswith(PARTIAL_SUFFIX):
        return "is an export that did not finish (the run was stopped while writing it)"
    if not path.exists():
        return "does not exist"
    if not (path / ADAPTER_CONFIG).is_file():
        return f"has no {ADAPTER_CONFIG}"
    if not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        return f"has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
    return None


def check_adapter_dir(path: str | Path, field: str) -> Path:
    """Return ``path`` as a Path, or fail naming ``field`` when it holds no complete PEFT adapter."""
    path = Path(path).expanduser()
    what = _incomplete(path)
    if what is not None:
        raise ConfigError(
            f"{field}: '{path}' {what}. Point it at a PEFT adapter folder, such as the "
            "'adapter' folder that fit writes under trainer.default_root_dir."
        )
    return path


def publish_adapter_dir(staging: Path, target: Path) -> Path | None:
    """Rename the complete, synced folder ``staging`` onto ``target``, keeping what was there.

    Args:
        staging: The side folder the export was written into, next to ``target``.
        target: The adapter's final path.

    Returns:
        Where the folder that was at ``target`` now is (``<target>.<n>``), or None.
    """
    kept = None
    if target.exists():
        kept = next(
            target.with_name(f"{target.name}.{n}")
            for n in itertools.count(1)
            if not target.with_name(f"{target.name}.{n}").exists()
        )
        os.rename(target, kept)
    os.rename(staging, target)
    fsync_folder(target.parent)
    return kept


def training_config(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The run configuration saved with the adapter, or None for adapters from elsewhere."""
    path = Path(adapter_dir) / TRAINING_CONFIG
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class BaseModelSpec:
    """The settings that decide a base model's weights and tokenizer.

    Args:
        model_name_or_path: Local folder, hub id, or the folder holding ``gguf_file``.
        gguf_file: GGUF file inside ``model_name_or_path``.
        random_init: Random weights from the folder's ``config.json`` (tests).
        seed: Seed of the random weights.
        tokenizer_name_or_path: Tokenizer source when it differs from the model's.
        quantization: How the base was stored while the adapter trained.
        source: Where these settings were read from, named in errors.
    """

    model_name_or_path: str
    gguf_file: str | None = None
    random_init: bool = False
    seed: int = 0
    tokenizer_name_or_path: str | None = None
    quantization: QuantizationSettings = QuantizationSettings(mode="none")
    source: str = field(default="--base", compare=False)

    @classmethod
    def of_adapter(cls, adapter_dir: str | Path) -> BaseModelSpec:
        """The base an adapter was trained on, from its training config or PEFT config."""
        adapter_dir = Path(adapter_dir)
        config = training_config(adapter_dir)
        if config is not None:
            model = config.get("model") or {}
            return cls.of_init_args(
                model.get("init_args", model), f"{adapter_dir / TRAINING_CONFIG} model.init_args.model_name_or_path"
            )
        peft_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
        name = peft_config.get("base_model_name_or_path")
        if not name:
            raise ConfigError(
                f"{adapter_dir / ADAPTER_CONFIG}: base_model_name_or_path is empty and there is no "
                f"{TRAINING_CONFIG}; pass --base with the model the adapter was trained on."
            )
        return cls(model_name_or_path=name, source=f"{adapter_dir / ADAPTER_CONFIG} base_model_name_or_path")

    @classmethod
    def of_init_args(cls, args: Mapping[str, Any], source: str) -> BaseModelSpec:
        """The base a module's ``init_args`` (a saved training config's, or a run's) describe.

        Args:
            args: The module's constructor arguments, as plain values.
            source: Where they were read from, named in errors.
        """
        quantization = args.get("quantization") or {}
        return cls(
            model_name_or_path=args["model_name_or_path"],
            gguf_file=args.get("gguf_file"),
            random_init=bool(args.get("random_init", False)),
            seed=int(args.get("seed", 0)),
            tokenizer_name_or_path=args.get("tokenizer_name_or_path"),
            quantization=QuantizationSettings(**quantization),
            source=source,
        )

    def check(self) -> None:
        """Fail before loading anything when the base cannot be found on this machine."""
        try:
            check_model_source(self.model_name_or_path, self.gguf_file, field=self.source)
        except ConfigError as error:
            raise ConfigError(f"{error} (or pass --base)") from None

    def folder(self) -> str:
        """What ``from_pretrained`` loads the full-precision base from."""
        from lit_lora.model.loading import base_model_folder

        return base_model_folder(self.model_name_or_path, self.gguf_file, self.random_init, self.seed)


def trained_quantization(adapter_dir: str | Path) -> QuantizationSettings:
    """How the base was stored while the adapter trained; ``none`` when unrecorded."""
    if training_config(adapter_dir) is None:
        return QuantizationSettings(mode="none")
    return BaseModelSpec.of_adapter(adapter_dir).quantization


def trained_template(adapter_dir: str | Path) -> str:
    """The ``data.template`` the adapter trained with (``auto`` when unrecorded)."""
    data = (training_config(adapter_dir) or {}).get("data") or {}
    return data.get("init_args", data).get("template", "auto")


def adapter_tokenizer_source(adapter_dir: str | Path | None, spec: BaseModelSpec) -> tuple[str, str | None]:
    """Where the tokenizer trained with is, as ``(name_or_path, gguf_file)``: the
    adapter's own copy (chat template included), else the base's (adapters from
    elsewhere often carry none, and the base alone has no adapter)."""
    from lit_lora.artifacts.tokenizer import tokenizer_source

    if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file():
        return str(adapter_dir), None
    return tokenizer_source(spec.model_name_or_path, spec.gguf_file, spec.tokenizer_name_or_path)


def base_spec(adapters: list[str | Path], base: str | None, gguf_file: str | None) -> BaseModelSpec:
    """The base to load adapters onto: ``base`` when given, else the first adapter's.

    Args:
        adapters: Adapter folders, already checked.
        base: A base model folder or hub id overriding the adapters' own.
        gguf_file: GGUF file inside ``base``.
    """
    if base is not None:
        spec = BaseModelSpec(base, gguf_file)
    elif adapters:
        spec = BaseModelSpec.of_adapter(adapters[0])
    else:
        raise ConfigError("--base: no adapter was given to read the base model from; pass --base.")
    spec.check()
    return spec
