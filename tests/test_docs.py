"""Every option a user can set is documented: the docstrings are what --help prints."""

from __future__ import annotations

import dataclasses
import inspect

import docstring_parser
import pytest

from lit_lora import DPOModule, LoRAModule, LoRASettings, LRSchedule, QuantizationSettings
from lit_lora.callbacks import (
    AdapterExport,
    GenerationPreview,
    PredictionWriter,
    Preemption,
    TrainingDiagnostics,
)
from lit_lora.data import ClassificationDataModule, SFTDataModule
from lit_lora.data.base import TaskDataModule

# ClassificationModule and PreferenceDataModule add no arguments to their parents'.
CONFIGURABLE = [
    LoRAModule,
    SFTDataModule,
    TaskDataModule,
    DPOModule,
    ClassificationDataModule,
    QuantizationSettings,
    LoRASettings,
    LRSchedule,
    AdapterExport,
    GenerationPreview,
    PredictionWriter,
    Preemption,
    TrainingDiagnostics,
]


@pytest.mark.parametrize("cls", CONFIGURABLE, ids=lambda cls: cls.__name__)
def test_every_constructor_argument_has_a_docstring(cls):
    if dataclasses.is_dataclass(cls):
        names = [field.name for field in dataclasses.fields(cls)]
    else:
        parameters = inspect.signature(cls.__init__).parameters.values()
        names = [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    doc = docstring_parser.parse(cls.__doc__)
    documented = {param.arg_name: param.description for param in doc.params}
    missing = [name for name in names if not documented.get(name)]
    assert not missing, f"{cls.__name__} documents no {missing}"
    assert doc.short_description
