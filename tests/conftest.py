"""Shared fixtures: the committed tiny model folder and a private model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("LIT_LORA_TINY_MODEL", REPO / "assets" / "tiny-llama"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep converted and random-initialised models out of the user's cache."""
    folder = tmp_path_factory.mktemp("lit_lora_cache")
    os.environ["LIT_LORA_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Folder with the tiny Llama config and tokenizer (random weights are built from it)."""
    return TINY_MODEL
