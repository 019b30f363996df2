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


def write_tiny_adapter(directory: Path, seed: int, quantization: str = "nf4") -> Path:
    """Write an exported-adapter folder on the tiny random base, with non-zero LoRA weights.

    The folder has what ``AdapterExport`` writes (PEFT files, tokenizer,
    ``training_config.yaml``), so ``merge``/``generate``/``evaluate`` rebuild the
    same random base from it. Different seeds give different adapters.
    """
    import torch
    import yaml

    from lit_lora import LoRAModule, LoRASettings, QuantizationSettings

    settings = {"mode": quantization}
    lora = LoRASettings(r=4, alpha=8, dropout=0.0, init_lora_weights=False)
    module = LoRAModule(
        str(TINY_MODEL), random_init=True, quantization=QuantizationSettings(**settings), lora=lora
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module.configure_model()
    module.save_adapter(directory)
    config = {
        "model": {
            "class_path": "lit_lora.LoRAModule",
            "init_args": {
                "model_name_or_path": str(TINY_MODEL),
                "random_init": True,
                "seed": 0,
                "quantization": settings,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "init_lora_weights": False},
            },
        }
    }
    (directory / "training_config.yaml").write_text(yaml.safe_dump(config))
    return directory


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different adapters (seeds 1 and 2) for the tiny random base, trained on nf4."""
    root = tmp_path_factory.mktemp("adapters")
    return write_tiny_adapter(root / "a", seed=1), write_tiny_adapter(root / "b", seed=2)
