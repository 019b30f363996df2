"""The tiny model the tests build on, and exported-adapter folders for it.

Helpers are imported as ``tests.helpers.<name>``: the repository root is on pytest's
``pythonpath`` and on the ``PYTHONPATH`` of the subprocesses the tests start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = Path(os.environ.get("LIT_LORA_TINY_MODEL", REPO / "assets" / "tiny-llama"))


def tiny_args(subcommand: str, root: Path, *extra: str) -> list[str]:
    """A command line running ``subcommand`` on configs/tiny.yaml into ``root``, without a progress bar."""
    return [
        subcommand,
        "--config",
        "configs/tiny.yaml",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def run_tiny(
    subcommand: str, root: Path, *extra: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m lit_lora`` with :func:`tiny_args` in its own process (a kill must not take pytest with it).

    Args:
        subcommand: ``fit``, ``validate``...
        root: The run folder.
        *extra: More command-line arguments.
        env: Environment variables on top of this process's (the repository is put on ``PYTHONPATH``).
    """
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    command = [sys.executable, "-m", "lit_lora", *tiny_args(subcommand, root, *extra)]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)


def assert_same_adapter(root: Path, reference: Path) -> None:
    """The adapters exported under the run folders ``root`` and ``reference`` hold bit-identical weights."""
    from safetensors.torch import load_file

    actual, expected = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (root, reference))
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].equal(expected[name]), name


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
    module = LoRAModule(str(TINY_MODEL), random_init=True, quantization=QuantizationSettings(**settings), lora=lora)
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
