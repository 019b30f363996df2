"""A base model with trained adapters on it, built as the adapters were trained.

``merge``, ``generate`` and ``evaluate`` load "base + adapters" through
:func:`resolve_trained_model` and :meth:`TrainedModel.load`, and ``validate``/``test``/
``predict --ckpt_path <adapter folder>`` checks its run's base with
:func:`check_configured_base`; all of them read the base from the adapter folders
(:meth:`~lit_lora.artifacts.adapter_dir.BaseModelSpec.of_adapter`) unless ``--base``
overrides it.

The device rule, the one every command follows: the device given (``--device``, or
the CPU that ``merge`` always works on), else the GPU when there is one, else the CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from lit_lora.artifacts.adapter_dir import (
    TRAINING_CONFIG,
    BaseModelSpec,
    adapter_tokenizer_source,
    base_spec,
    trained_quantization,
)
from lit_lora.errors import ConfigError
from lit_lora.model.loading import load_base_model
from lit_lora.model.quantization import DTypeName, QuantizationSettings
from lit_lora.model.trained_on import base_differences, listed, overrides

# The options every command loading "base + adapters" shares, documented once: a
# command's docstring names them as ``{base}``, ``{gguf_file}``... and
# :func:`shared_option_docs` fills the text in, so ``--help`` shows it.
SHARED_OPTION_DOCS = {
    "base": (
        "Base model folder or hub id, overriding the one the adapters record (their "
        "``training_config.yaml``, else PEFT's ``base_model_name_or_path``)."
    ),
    "gguf_file": "GGUF file inside ``base`` to read the base weights from.",
    "quantized": (
        "Load the base quantized as it was while the adapters trained (read from their "
        "``training_config.yaml``, e.g. 4-bit NF4 for QLoRA), the model validation measured; "
        "false loads it unquantized at the trained compute dtype, the weights ``merge`` "
        "folds an adapter into."
    ),
    "device": (
        "Where the model runs, e.g. ``cuda``, ``cuda:1`` or ``cpu``; null uses the GPU when there is one, else the CPU."
    ),
}

Function = TypeVar("Function", bound=Callable[..., Any])


def shared_option_docs(function: Function) -> Function:
    """Fill :data:`SHARED_OPTION_DOCS` into ``function``'s docstring, where it names them.

    Args:
        function: A command whose docstring says ``{base}``, ``{gguf_file}``... for the shared text.
    """
    doc = function.__doc__ or ""
    for name, text in SHARED_OPTION_DOCS.items():
        doc = doc.replace(f"{{{name}}}", text)
    function.__doc__ = doc
    return function


def resolve_device(device: str | None) -> torch.device:
    """The device to load onto, by the module's device rule.

    Args:
        device: ``--device`` as given, or None.

    Raises:
        ConfigError: ``device`` is no device, or names CUDA on a machine without it.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: '{device}' is no device. Fix: use cpu, cuda or cuda:N.") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: '{device}', but this machine has no CUDA device. Fix: use cpu.")
    return target


@dataclass(frozen=True)
class TrainedModel:
    """The base and adapters to load, checked, with nothing loaded yet.

    Args:
        adapters: The adapter folders, in order; empty for the base alone.
        spec: The base, its ``quantization`` as it will be loaded.
        device: Where it is loaded.
    """

    adapters: tuple[Path, ...]
    spec: BaseModelSpec
    device: torch.device

    def tokenizer_source(self) -> tuple[str, str | None]:
        """The tokenizer trained with: the first adapter's copy, else the base's."""
        return adapter_tokenizer_source(self.adapters[0] if self.adapters else None, self.spec)

    def load(self, adapter_names: Sequence[str] = ("default",)) -> PreTrainedModel | PeftModel:
        """Load the base once and every adapter onto it; the base alone without adapters.

        Args:
            adapter_names: The PEFT adapter name of each adapter, in order; PEFT's own
                ``default`` for a single adapter.
        """
        model = load_base_model(self.spec.folder(), self.spec.quantization, self.device)
        if not self.adapters:
            return model
        (first, first_name), *others = zip(self.adapters, adapter_names, strict=True)
        model = PeftModel.from_pretrained(model, first, adapter_name=first_name)
        for adapter, name in others:
            model.load_adapter(adapter, adapter_name=name)
        return model


def resolve_trained_model(
    adapters: Sequence[Path],
    base: str | None = None,
    gguf_file: str | None = None,
    quantized: bool = True,
    device: str | None = None,
    compute_dtype: DTypeName | None = None,
) -> TrainedModel:
    """The base every adapter is loaded onto, stored as the adapters trained on it or unquantized.

    Without ``base``, all adapters must record the same base (and, when loading it
    quantized, the same quantization): an adapter only means something on the
    weights it was trained on.

    Args:
        adapters: The adapter folders, already checked; empty for the base alone.
        base: ``--base``, overriding the adapters' base.
        gguf_file: ``--gguf_file``.
        quantized: Store the base as during training, else unquantized.
        device: The device to load onto (see the module's device rule), or None.
        compute_dtype: The dtype of the unquantized weights; None keeps the trained one.

    Raises:
        ConfigError: The adapters record different bases or quantizations, the base
            cannot be found, or the device does not exist here.
    """
    spec = base_spec(list(adapters), base, gguf_file)
    if base is None:
        for adapter in adapters[1:]:
            other = BaseModelSpec.of_adapter(adapter)
            if _weights(other) != _weights(spec):
                raise ConfigError(
                    f"--adapters: '{adapter}' was trained on {_describe(other)} but '{adapters[0]}' on "
                    f"{_describe(spec)}; adapters compared side by side must share their base. Fix: generate "
                    "for them separately, or pass --base to load every adapter onto one base."
                )
    trained = [trained_quantization(adapter) for adapter in adapters] or [QuantizationSettings(mode="none")]
    if quantized:
        for adapter, settings in zip(adapters[1:], trained[1:], strict=True):
            if settings != trained[0]:
                raise ConfigError(
                    f"--adapters: '{adapter}' was trained on a base stored as {settings}, '{adapters[0]}' on one "
                    f"stored as {trained[0]}. Fix: pass --quantized false to compare them on the unquantized "
                    "base, or generate for them separately."
                )
        quantization = trained[0]
    else:
        quantization = QuantizationSettings(mode="none", compute_dtype=compute_dtype or trained[0].compute_dtype)
    spec = dataclasses.replace(spec, quantization=quantization)
    return TrainedModel(tuple(adapters), spec, resolve_device(device))


def _weights(spec: BaseModelSpec) -> BaseModelSpec:
    """What decides the base's weights, however they are stored."""
    return dataclasses.replace(spec, quantization=QuantizationSettings(mode="none"))


def _describe(spec: BaseModelSpec) -> str:
    fields = [f"'{spec.model_name_or_path}'"]
    if spec.gguf_file is not None:
        fields.append(f"gguf_file '{spec.gguf_file}'")
    if spec.random_init:
        fields.append(f"random weights of seed {spec.seed}")
    if spec.tokenizer_name_or_path is not None:
        fields.append(f"tokenizer '{spec.tokenizer_name_or_path}'")
    return ", ".join(fields)


def check_configured_base(adapter_dir: Path, init_args: Mapping[str, Any]) -> None:
    """Fail when a run would measure an adapter on another base than it was trained on.

    ``validate``/``test``/``predict --ckpt_path <adapter folder>`` build the base from
    the run's ``model`` settings; those must be the ones in the adapter's
    ``training_config.yaml``. An adapter from elsewhere records no quantization, so it
    is not checked.

    Args:
        adapter_dir: The adapter folder given as ``--ckpt_path``.
        init_args: The run's ``model.init_args``, as plain values.

    Raises:
        ConfigError: A base setting differs, naming both values and the fix.
    """
    if not (adapter_dir / TRAINING_CONFIG).is_file():
        return
    found = base_differences(adapter_dir, init_args)
    if not found:
        return
    raise ConfigError(
        f"ckpt_path: the adapter in '{adapter_dir}' was trained on another base than this run configures: "
        f"{listed(found)}. Fix: run with --config {adapter_dir / TRAINING_CONFIG} (the run that trained it), or set "
        f"{overrides(found)}."
    )
