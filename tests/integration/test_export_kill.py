"""A run killed in the middle of its adapter export leaves no half adapter, and the earlier one intact.

The export is written into a hidden side folder and renamed into place once complete
(:mod:`lit_lora.artifacts.adapter_dir`); the kill comes after the PEFT files are in
the side folder (``tests.helpers.kill_switch.KillDuringExport``).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lit_lora.artifacts.adapter_dir import check_adapter_dir, is_adapter_dir
from lit_lora.errors import ConfigError
from tests.helpers.tiny import run_tiny

pytestmark = pytest.mark.slow


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_kill_during_export_leaves_no_adapter_but_the_earlier_one(tmp_path):
    root = tmp_path / "run"
    # An earlier run's adapter (its content does not matter here, only that it stays as it is).
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    save_file({"lora_A": torch.ones(4, 2)}, root / "adapter" / "adapter_model.safetensors")
    earlier = contents(root / "adapter")

    killed = run_tiny(
        "fit",
        root,
        *("--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0"),
        *("--data.batch_size", "2", "--model.quantization.mode", "none"),
        "--trainer.callbacks+=tests.helpers.kill_switch.KillDuringExport",
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert contents(root / "adapter") == earlier
    # The interrupted export is in its side folder, PEFT files and all...
    (partial,) = root.glob(".adapter.*.partial")
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.yaml"} <= set(contents(partial))
    # ...which no command takes for an adapter; nor any other folder the run left.
    assert [p.name for p in root.rglob("*") if is_adapter_dir(p)] == ["adapter"]
    with pytest.raises(ConfigError, match="is an export that did not finish"):
        check_adapter_dir(partial, "--adapters")
