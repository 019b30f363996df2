"""What counts as an adapter folder, and how a finished export takes its place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lit_lora.artifacts.adapter_dir import check_adapter_dir, is_adapter_dir, publish_adapter_dir
from lit_lora.artifacts.atomic import partial_path
from lit_lora.errors import ConfigError


def adapter(folder: Path, weights: str = "adapter_model.safetensors", tag: str = "") -> Path:
    """A folder with PEFT's two files (their content is not read here)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}" + tag)
    if weights:
        (folder / weights).write_text(tag)
    return folder


@pytest.mark.parametrize("weights", ["adapter_model.safetensors", "adapter_model.bin"])
def test_an_adapter_folder_has_the_config_and_the_weights(tmp_path, weights):
    assert is_adapter_dir(adapter(tmp_path / "a", weights))
    check_adapter_dir(tmp_path / "a", "--adapter")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: adapter(p, weights=""), "has no adapter weights (adapter_model.safetensors or adapter_model.bin)"),
        (lambda p: p.mkdir(), "has no adapter_config.json"),
        (lambda p: None, "does not exist"),
        # What an export written in place and killed midway could leave.
        (lambda p: (p.mkdir(), (p / "adapter_model.safetensors").write_text("")), "has no adapter_config.json"),
    ],
)
def test_an_incomplete_folder_is_refused_with_what_it_lacks(tmp_path, make, reason):
    make(tmp_path / "a")
    assert not is_adapter_dir(tmp_path / "a")
    with pytest.raises(ConfigError, match="^" + re.escape(f"--adapter: '{tmp_path / 'a'}' {reason}. Point it at")):
        check_adapter_dir(tmp_path / "a", "--adapter")


def test_a_side_folder_is_no_adapter_even_when_its_files_are_there(tmp_path):
    side = adapter(partial_path(tmp_path / "adapter", hidden=True))
    assert side.name.startswith(".adapter.") and side.name.endswith(".partial")
    assert not is_adapter_dir(side)
    with pytest.raises(ConfigError, match="is an export that did not finish"):
        check_adapter_dir(side, "--adapters")


def test_a_finished_export_keeps_the_adapters_before_it_under_numbers(tmp_path):
    target = tmp_path / "adapter"
    assert publish_adapter_dir(adapter(tmp_path / ".first.partial", tag="1"), target) is None
    assert publish_adapter_dir(adapter(tmp_path / ".second.partial", tag="2"), target) == tmp_path / "adapter.1"
    assert publish_adapter_dir(adapter(tmp_path / ".third.partial", tag="3"), target) == tmp_path / "adapter.2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adapter.1", "adapter.2"]
    assert [(tmp_path / n / "adapter_config.json").read_text() for n in ("adapter.1", "adapter.2", "adapter")] == [
        "{}1",
        "{}2",
        "{}3",
    ]
