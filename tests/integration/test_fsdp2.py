"""Sharded training (configs/strategies/fsdp2.yaml) on two real CPU processes (gloo).

Each run is a real ``python -m lit_lora fit``. A 2-process sharded run trains the
adapter a 2-process DDP run trains: for one epoch with the tiny model's 4-bit base
(the DDP run of tests/integration/test_ddp.py, shared), and for one step with an
unquantized random model of SmolLM2-135M's shape, whose checkpoint must also stay
adapter-sized. The tiny run's step checkpoint resumes on one device to the same
adapter, its last checkpoint validates on one device, and its export is a normal PEFT
adapter. Dropout is off and everything is float32; tolerance 1e-4 (measured: 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_lora.cli import main
from tests.helpers.epoch import ADAPTER, STEP_CHECKPOINTS, fit_epoch
from tests.helpers.tiny import REPO, TINY_MODEL, run_tiny

FSDP2 = ("--config", "configs/strategies/fsdp2.yaml")
DDP = ("--config", "configs/strategies/ddp.yaml")

# SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M config.json), random weights.
SMOLLM2_SHAPE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rope_theta": 100000,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def fit(root: Path, *extra: str) -> Path:
    """``fit`` on configs/tiny.yaml into ``root``; the exported adapter's weights file."""
    done = run_tiny("fit", root, *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    return root / ADAPTER


def largest_difference(a: Path, b: Path) -> float:
    one, two = load_file(a), load_file(b)
    assert one.keys() == two.keys()
    return max((one[name] - two[name]).abs().max().item() for name in one)


def trained(path: Path) -> bool:
    """The adapter moved: LoRA B starts at zero."""
    return max(w.abs().max().item() for name, w in load_file(path).items() if "lora_B" in name) > 1e-3


@pytest.fixture(scope="module")
def sharded_tiny(tmp_path_factory: pytest.TempPathFactory, epoch_files: tuple[str, str]) -> Path:
    """The run folder of the epoch of ``ddp_epoch``, sharded over two processes instead."""
    root = tmp_path_factory.mktemp("fsdp2_epoch")
    fit_epoch(root, ["--data.train_file", epoch_files[0]], 2, *STEP_CHECKPOINTS, *FSDP2)
    return root


def test_a_sharded_4bit_run_trains_what_ddp_trains(sharded_tiny, ddp_epoch):
    sharded = sharded_tiny / ADAPTER
    assert trained(sharded)
    difference = largest_difference(sharded, ddp_epoch / ADAPTER)
    print(f"nf4, fsdp2 vs ddp: max abs adapter difference {difference:.3g}")
    assert difference < 1e-4


def test_a_sharded_checkpoint_resumes_on_one_device_to_the_same_adapter(sharded_tiny, epoch_files, tmp_path):
    # Steps 5 and 6 on one device with twice the accumulation: the same examples per step.
    root = tmp_path / "one_device"
    (root / "checkpoints").mkdir(parents=True)
    step4 = root / "checkpoints" / "step4.ckpt"
    step4.write_bytes((sharded_tiny / "checkpoints" / "step4.ckpt").read_bytes())
    resumed = fit_epoch(root, ["--data.train_file", epoch_files[0]], 1, "--ckpt_path", str(step4))
    difference = largest_difference(resumed, sharded_tiny / ADAPTER)
    print(f"fsdp2 on 2 devices vs resumed on 1 after step 4: max abs adapter difference {difference:.3g}")
    assert difference < 1e-4


def test_a_sharded_checkpoint_validates_on_one_device(sharded_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    checkpoint = sharded_tiny / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert all(".lora_" in name for name in state["state_dict"])
    cli = main(
        [
            "validate",
            *("--config", "configs/tiny.yaml", "--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.enable_progress_bar", "false", "--ckpt_path", str(checkpoint)),
        ]
    )
    loaded = {f"model.{name}": p for name, p in cli.model.model.named_parameters() if p.requires_grad}
    for name, weight in state["state_dict"].items():
        assert loaded[name].equal(weight), name
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_a_sharded_runs_export_is_a_peft_adapter(sharded_tiny):
    from peft import PeftModel

    from lit_lora.model.loading import load_base_model, random_weights_folder
    from lit_lora.model.quantization import QuantizationSettings

    folder = sharded_tiny / ADAPTER.parent
    base = load_base_model(
        str(random_weights_folder(str(TINY_MODEL), 0)),
        QuantizationSettings(compute_dtype="float32"),
        torch.device("cpu"),
    )
    model = PeftModel.from_pretrained(base, folder)
    exported = load_file(folder / "adapter_model.safetensors")
    loaded = {name: p for name, p in model.named_parameters() if ".lora_" in name}
    assert len(loaded) == len(exported)
    state = torch.load(sharded_tiny / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, weight in state.items():
        peft_name = name.removeprefix("model.")
        assert loaded[peft_name].equal(weight), name


@pytest.fixture(scope="module")
def smollm2_shape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("smollm2_shape")
    (folder / "config.json").write_text(json.dumps(SMOLLM2_SHAPE))
    return folder


def test_a_sharded_unquantized_run_of_smollm2s_shape_trains_what_ddp_trains_into_adapter_sized_checkpoints(
    smollm2_shape, tmp_path
):
    base = (*("--model.model_name_or_path", str(smollm2_shape)), "--model.tokenizer_name_or_path", str(TINY_MODEL))
    # One optimizer step, at the full learning rate (no warmup step at lr 0).
    settings = (*base, "--model.quantization.mode", "none", "--model.lora.dropout", "0.0")
    settings += ("--model.scheduler.warmup_ratio", "0.0")
    settings += (
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.accumulate_grad_batches",
        "1",
    )
    settings += ("--data.batch_size", "2", "--data.max_length", "48")
    sharded = fit(tmp_path / "fsdp2", *FSDP2, *settings)
    reference = fit(tmp_path / "ddp", *DDP, *settings)
    assert trained(sharded)
    difference = largest_difference(sharded, reference)
    print(f"none, SmolLM2 shape, fsdp2 vs ddp: max abs adapter difference {difference:.3g}")
    assert difference < 1e-4

    # The base's weights as trained (float32 on CPU): 135M parameters, about 540 MB.
    from lit_lora.model.loading import random_weights_folder

    base_bytes = sum(path.stat().st_size for path in random_weights_folder(str(smollm2_shape), 0).glob("*.safetensors"))
    checkpoint = tmp_path / "fsdp2" / "checkpoints" / "last.ckpt"
    share = checkpoint.stat().st_size / base_bytes
    size = checkpoint.stat().st_size
    print(f"checkpoint {size / 2**20:.1f} MiB = {100 * share:.2f}% of the base's {base_bytes / 2**20:.0f} MiB")
    assert base_bytes > 500e6
    assert share < 0.05
