"""The tokenization cache key: built from each data module's encoding settings, never its loader settings."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from datasets.fingerprint import Hasher

from lit_lora.data import ClassificationDataModule, PreferenceDataModule, SFTDataModule
from lit_lora.data.base import DataModuleContract, TaskDataModule
from tests.helpers.sft import write_jsonl

MODULES = [SFTDataModule, PreferenceDataModule, ClassificationDataModule]


def constructor_arguments(module: type[TaskDataModule]) -> set[str]:
    """The arguments of the constructor the CLI reads, following ``*args``/``**kwargs`` up to the parents."""
    names = set()
    for cls in module.__mro__[: module.__mro__.index(TaskDataModule) + 1]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return names


@pytest.mark.parametrize("module", MODULES)
def test_every_constructor_argument_is_encoding_or_loader_only(module: type[TaskDataModule]) -> None:
    encoding, loader = set(module.encoding_settings), set(module.loader_settings)
    assert not encoding & loader
    assert encoding | loader == constructor_arguments(module)


@pytest.mark.parametrize("module", MODULES)
def test_data_modules_meet_the_planning_contract(tmp_path: Path, module: type[TaskDataModule]) -> None:
    data = module(write_jsonl(tmp_path / "rows.jsonl", [{"text": "x", "label": 0}]))
    assert isinstance(data, DataModuleContract)
    assert data.sequences_per_example == (2 if module is PreferenceDataModule else 1)


def fingerprint(path: str, tokenizer: str, **settings: object) -> str:
    data = SFTDataModule(path, tokenizer_name_or_path=tokenizer, **settings)
    data.load_tokenizer()
    return Hasher.hash(data.encoder().encode_row)


def test_an_encoding_setting_changes_the_cache_key_and_a_loader_setting_does_not(
    tmp_path: Path, chat_path: str
) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    key = fingerprint(path, chat_path)
    assert fingerprint(path, chat_path, batch_size=2, num_workers=1, seed=1) == key
    assert fingerprint(path, chat_path, max_length=64) != key
    assert fingerprint(path, chat_path, train_on_prompt=True) != key
    assert fingerprint(path, chat_path, system_prompt="Be brief") != key
    assert fingerprint(path, chat_path, allow_special_tokens_in_text=True) != key
