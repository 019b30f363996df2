"""The command line: every shipped YAML, print_config round trips, end-to-end fit, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from lit_lora import LoRAModule
from lit_lora.artifacts.adapter_dir import BaseModelSpec
from lit_lora.cli import main
from lit_lora.model.loading import load_base_model, random_weights_folder
from lit_lora.model.trained_on import RECORD_KEY, lit_lora_version
from tests.helpers.parsing import parse
from tests.helpers.tiny import tiny_args

REPO = Path(__file__).resolve().parents[1]
# A run's own configs; configs/strategies/ holds pieces added to one (tested below).
STRATEGIES = REPO / "configs" / "strategies"
CONFIGS = sorted(path for path in (REPO / "configs").rglob("*.yaml") if STRATEGIES not in path.parents)
# Each strategy config: the settings it sets (flattened), all it changes in the run it is added to.
SHARDED = {"trainer.strategy.class_path": "lit_lora.training.sharded_base.ShardedBaseStrategy"}
ON_GPUS = {"trainer.accelerator": "gpu", "trainer.devices": 2, "trainer.precision": "bf16-mixed"}
BF16_STORAGE = {
    "model.init_args.quantization.compute_dtype": "bfloat16",
    "model.init_args.quantization.quant_storage": "bfloat16",
}
DEEPSPEED = {
    "trainer.strategy.class_path": "lightning.pytorch.strategies.DeepSpeedStrategy",
    "trainer.strategy.init_args.exclude_frozen_parameters": True,
    "model.init_args.optimizer.class_path": "torch.optim.AdamW",
    "trainer.accumulate_grad_batches": 1,
    **ON_GPUS,
}
STRATEGY_SETTINGS = {
    "ddp.yaml": {"trainer.strategy": "ddp", "trainer.devices": 2},
    "fsdp2.yaml": {**SHARDED, "trainer.devices": 2},
    "fsdp_qlora.yaml": {**SHARDED, **ON_GPUS, **BF16_STORAGE, "model.init_args.gradient_checkpointing": True},
    "deepspeed_zero2.yaml": {
        **DEEPSPEED,
        "trainer.strategy.init_args.stage": 2,
        "model.init_args.quantization.compute_dtype": "bfloat16",
    },
    "deepspeed_zero3.yaml": {**DEEPSPEED, **BF16_STORAGE, "trainer.strategy.init_args.stage": 3},
}


@pytest.fixture
def in_repo(monkeypatch):
    # Shipped configs name repo-relative paths (assets/, data/), as the README runs them.
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config, in_repo):
    cfg = parse(["fit", "--config", str(config)]).fit
    assert cfg.model.class_path.startswith("lit_lora.")
    assert cfg.data.init_args.train_file or cfg.data.init_args.get("mix")


@pytest.mark.parametrize("name", sorted(STRATEGY_SETTINGS))
def test_a_strategy_config_composes_with_a_run_config(name, in_repo):
    assert sorted(path.name for path in STRATEGIES.glob("*.yaml")) == sorted(STRATEGY_SETTINGS)
    composed = flat(parse(["fit", "--config", "configs/tiny.yaml", "--config", str(STRATEGIES / name)]).fit)
    alone = flat(parse(["fit", "--config", "configs/tiny.yaml"]).fit)
    settings = STRATEGY_SETTINGS[name]
    for key, value in settings.items():
        assert composed[key] == value, key
    # A strategy class brings its own defaults; an optimizer class keeps the run's
    # settings that it shares (lr, weight decay...) and drops the others.
    optimizer = "model.init_args.optimizer.init_args."
    changed = set(settings) | {"config", "trainer.strategy"}
    if "model.init_args.optimizer.class_path" in settings:
        changed |= {key for key in composed.keys() ^ alone.keys() if key.startswith(optimizer)}

    def rest(config: dict) -> dict:
        return {k: v for k, v in config.items() if not any(k == c or k.startswith(c + ".") for c in changed)}

    assert rest(composed) == rest(alone)


def flat(config) -> dict:
    """A parsed config as ``{"a.b.c": leaf}``."""
    items = config.as_dict() if hasattr(config, "as_dict") else config
    out = {}
    for key, value in items.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


def test_print_config_runs_again_unchanged(in_repo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(printed)
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["lora"]["r"] == 8
    assert config["checkpoint"]["save_last"] is True
    # The printed file is complete: parsing it alone gives the same configuration.
    again = parse(["fit", "--config", str(dumped)])
    original = parse(["fit", "--config", "configs/tiny.yaml"])
    again, original = again.fit.as_dict(), original.fit.as_dict()
    assert again.pop("config") != original.pop("config")  # only where it came from differs
    assert again == original


def test_help_documents_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "lit_lora", "fit", "--model.help", "lit_lora.LoRAModule"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "Rank of each update" in out  # lora.r's docstring
    assert "4-bit NormalFloat" in out  # quantization.mode's docstring
    assert "--model.scheduler.warmup_ratio" in out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One end-to-end ``fit`` of configs/tiny.yaml, shared by the tests below."""
    root = tmp_path_factory.mktemp("fit") / "run"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield main(tiny_args("fit", root)), root
    finally:
        os.chdir(cwd)


def test_fit_exports_an_adapter_that_plain_peft_reproduces(fitted):
    cli, root = fitted
    module = cli.model
    adapter = root / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert cli.trainer.global_step > 0
    metrics = cli.trainer.callback_metrics
    for name in ("train/loss", "train/grad_norm", "train/lr", "train/supervised_tokens_per_sec", "val/perplexity"):
        assert torch.isfinite(metrics[name]) and metrics[name] > 0, name
    assert metrics["val/perplexity"].item() == pytest.approx(math.exp(metrics["val/loss"].item()), rel=1e-5)

    base = load_base_model(
        str(random_weights_folder(module.model_name_or_path, module.seed)), module.quantization, torch.device("cpu")
    )
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    module.eval()
    with torch.no_grad():
        expected = module(batch["input_ids"], batch["attention_mask"])
        actual = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    # The adapter did change the model: the base alone gives other logits.
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_checkpoints_hold_only_the_adapter_and_the_loop_state(fitted):
    cli, root = fitted
    checkpoints = sorted(p.name for p in root.rglob("*.ckpt"))
    assert len(checkpoints) == 4 and {"last.ckpt", "best.ckpt"} <= set(checkpoints)  # two epochs + last + best
    state = torch.load(next(root.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert set(state["state_dict"]) == {n for n, p in cli.model.named_parameters() if p.requires_grad}
    assert state["optimizer_states"] and state["lr_schedulers"]
    assert state["global_step"] == cli.trainer.global_step


def test_checkpoints_record_what_they_were_trained_on(fitted):
    cli, root = fitted
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    lora = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "bias": "none"}
    lora |= {"layers_to_transform": None, "modules_to_save": None, "use_dora": False, "use_rslora": False}
    quantization = {"mode": "nf4", "double_quant": True, "compute_dtype": "float32", "quant_storage": "uint8"}
    settings = {"model_name_or_path": "assets/tiny-llama", "gguf_file": None, "random_init": True}
    settings |= {"tokenizer_name_or_path": None, "seed": 0}
    settings |= {f"quantization.{k}": v for k, v in quantization.items()}
    settings |= {f"lora.{k}": v for k, v in lora.items()} | {"lora.init_lora_weights": True}
    assert checkpoint[RECORD_KEY] == {"format": 1, "lit_lora_version": lit_lora_version(), "settings": settings}


def test_fit_resumes_from_a_checkpoint(fitted, tmp_path, in_repo):
    cli, root = fitted
    last = next(root.rglob("last.ckpt"))
    resumed = main(tiny_args("fit", tmp_path / "resumed", "--ckpt_path", str(last), "--trainer.max_epochs", "3"))
    assert resumed.trainer.current_epoch == 3
    assert resumed.trainer.global_step == cli.trainer.global_step * 3 // 2


def test_resumed_run_ends_with_the_adapter_of_an_uninterrupted_run(tmp_path, in_repo):
    # Dropout off: then nothing random is left, and resuming from the end of epoch 0
    # must be exact (data order of epoch 1, 8-bit optimizer state, schedule position).
    no_dropout = ("--model.lora.dropout", "0.0")
    whole = main(tiny_args("fit", tmp_path / "whole", *no_dropout))
    epoch0 = next((tmp_path / "whole").rglob("epoch00-*.ckpt"))
    resumed = main(tiny_args("fit", tmp_path / "resumed", *no_dropout, "--ckpt_path", str(epoch0)))
    assert resumed.trainer.global_step == whole.trainer.global_step
    expected = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], rtol=0, atol=0)


def test_validate_test_and_predict_use_the_checkpoint(fitted, tmp_path, in_repo):
    cli, root = fitted
    last = str(next(root.rglob("last.ckpt")))
    val_loss = cli.trainer.callback_metrics["val/loss"].item()
    validated = main(tiny_args("validate", tmp_path, "--ckpt_path", last))
    assert validated.trainer.callback_metrics["val/loss"].item() == pytest.approx(val_loss, rel=1e-5)
    tested = main(tiny_args("test", tmp_path, "--ckpt_path", last))
    assert tested.trainer.callback_metrics["test/perplexity"].item() == pytest.approx(math.exp(val_loss), rel=1e-4)
    main(tiny_args("predict", tmp_path, "--ckpt_path", last, "--model.max_new_tokens", "4"))
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    examples = cli.datamodule.prompt_examples("validation")
    assert len(rows) == len(examples)
    assert rows[0]["reference"] == examples[0].reference
    assert rows[0]["prompt"] == cli.datamodule.tokenizer.decode(examples[0].prompt_ids)
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_exported_adapter_carries_a_model_card_and_the_runs_config(fitted, tmp_path, in_repo):
    cli, root = fitted
    adapter = root / "adapter"
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\nbase_model: assets/tiny-llama\nlibrary_name: peft\n")
    assert f"- `val/loss`: {cli.trainer.callback_metrics['val/loss'].item():.6g}" in card
    assert "| LoRA rank / alpha / dropout | 8 / 16 / 0.05 |" in card
    assert "| Epochs / optimizer steps | 2 / 26 |" in card
    assert "trained against the nf4-quantized base" in card
    assert f"python -m lit_lora fit --config {adapter / 'training_config.yaml'} --trainer.default_root_dir" in card
    # The saved config is complete: it parses alone, to the settings of the run.
    elsewhere = ("--trainer.default_root_dir", str(tmp_path))
    saved = parse(["fit", "--config", str(adapter / "training_config.yaml"), *elsewhere]).fit
    original = parse(tiny_args("fit", tmp_path)).fit
    assert saved.ckpt_path is None
    assert saved.model.as_dict() == original.model.as_dict()
    assert saved.data.as_dict() == original.data.as_dict()
    assert BaseModelSpec.of_adapter(adapter) == BaseModelSpec(
        "assets/tiny-llama", random_init=True, seed=0, quantization=cli.model.quantization
    )


def test_validate_on_the_adapter_folder_reproduces_the_last_val_loss(fitted, tmp_path, in_repo):
    cli, root = fitted
    adapter = root / "adapter"
    logged = cli.trainer.callback_metrics["val/loss"].item()
    args = [
        "--config",
        str(adapter / "training_config.yaml"),
        "--ckpt_path",
        str(adapter),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    validated = main(["validate", *args])
    assert validated.model.adapter_path == str(adapter)
    assert validated.trainer.callback_metrics["val/loss"].item() == pytest.approx(logged, rel=1e-6)
    tested = main(["test", *args])  # no test_file: the validation data
    assert tested.trainer.callback_metrics["test/loss"].item() == pytest.approx(logged, rel=1e-6)


def test_training_starts_from_an_adapter_folder(fitted, tmp_path, in_repo):
    cli, root = fitted
    adapter = root / "adapter"
    saved = load_file(adapter / "adapter_model.safetensors")
    # The adapter's own shape wins over model.lora (r 4 here, 8 in the adapter).
    run = main(
        tiny_args(
            "fit", tmp_path, "--model.adapter_path", str(adapter), "--model.lora.r", "4", "--trainer.max_steps", "1"
        )
    )
    start = LoRAModule(
        "assets/tiny-llama", random_init=True, quantization=cli.model.quantization, adapter_path=str(adapter)
    )
    start.configure_model()
    weights = {n: p for n, p in start.model.named_parameters() if p.requires_grad}
    assert len(weights) == len(saved) > 0
    for name, value in saved.items():
        torch.testing.assert_close(weights[name.replace(".weight", ".default.weight")], value, rtol=0, atol=0)
    trained = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in saved.items()}
    assert run.trainer.global_step == 1
    assert any(not torch.equal(trained[k], saved[k]) for k in saved)  # and it trained on


def test_fit_will_not_take_an_adapter_folder_as_a_checkpoint(fitted, tmp_path, in_repo, capsys):
    cli, root = fitted
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args("fit", tmp_path, "--ckpt_path", str(root / "adapter")))
    assert exit_info.value.code == 2
    assert "set model.init_args.adapter_path to it instead" in capsys.readouterr().err


def test_fit_will_not_overwrite_an_earlier_runs_checkpoints(fitted, in_repo, capsys):
    cli, root = fitted
    before = {p: p.stat().st_mtime_ns for p in (root / "checkpoints").iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args("fit", root))
    assert exit_info.value.code == 2
    assert "already holds checkpoints of an earlier run" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in (root / "checkpoints").iterdir()}


def test_wrong_option_is_rejected_before_any_work(in_repo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny.yaml", "--model.lora.rank", "8"])
    assert exit_info.value.code != 0
    assert "rank" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--data.train_file", "absent.jsonl", "data.train_file: 'absent.jsonl' does not exist"),
        ("--data.format", "vicuna", "vicuna"),
        ("--model.model_name_or_path", "./no_model", "model.model_name_or_path: './no_model' is a local path, and"),
    ],
)
def test_bad_input_stops_with_the_field_and_the_fix(in_repo, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny.yaml", option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err


def test_console_script_is_the_same_cli():
    script = Path(sys.executable).parent / "lit-lora"  # the one installed with this Python
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "fit" in out and "predict" in out


def test_a_mix_of_two_sets_trains_from_yaml(tmp_path, in_repo):
    # The quickstart chats, and the same task as question/answer columns renamed on reading.
    chats = [json.loads(line) for line in Path("data/quickstart/train.jsonl").read_text().splitlines()[:40]]
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps({"question": row["messages"][-2]["content"], "answer": row["messages"][-1]["content"]}) + "\n"
            for row in chats
        )
    )
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "init_args": {
                        "train_file": None,
                        "mix": [
                            {"path": "data/quickstart/train.jsonl", "weight": 3},
                            {
                                "path": str(qa),
                                "format": "prompt_completion",
                                "fields": {"prompt": "question", "completion": "answer"},
                            },
                        ],
                    }
                }
            }
        )
    )
    run = main(tiny_args("fit", tmp_path / "run", "--config", str(mix), "--trainer.max_steps", "2"))
    assert run.trainer.global_step == 2
    assert run.datamodule.stats["train"].kept == 440
    saved = yaml.safe_load((tmp_path / "run" / "adapter" / "training_config.yaml").read_text())
    assert saved["data"]["init_args"]["mix"][1]["fields"] == {"prompt": "question", "completion": "answer"}
