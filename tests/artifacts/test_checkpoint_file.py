"""``--ckpt_path`` checked before any model is built: files, special values, URLs, the recorded settings.

Each bad value must end the command with ``lit_lora: error: ...`` and exit 2 before the
model is built; ``module_built`` fails the test if a base model is built or cached at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lit_lora.model.base
from lit_lora.artifacts.checkpoint_file import (
    LAST_IF_ANY,
    check_run_sources,
    checkpoint_file,
    is_safetensors,
    read_checkpoint,
)
from lit_lora.cli import LitLoraCLI, main
from lit_lora.errors import ConfigError
from lit_lora.model.trained_on import RECORD_FORMAT, RECORD_KEY, recorded_settings, trained_settings
from tests.helpers.parsing import parse
from tests.helpers.tiny import REPO, tiny_args


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.fixture
def module_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail as soon as anything builds a base model: every check here must come first."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built before --ckpt_path was checked")

    monkeypatch.setattr(lit_lora.model.base.LoRAModule, "configure_model", refuse)
    monkeypatch.setattr(LitLoraCLI, "_write_base_to_cache", refuse)


def tiny_settings(*overrides: str) -> dict:
    """What configs/tiny.yaml trains on, as a checkpoint records it."""
    return trained_settings(parse(tiny_args("fit", Path("unused"), *overrides)).fit.model.init_args.as_dict())


def lightning_checkpoint(path: Path, settings: dict | None = None, resumable: bool = True) -> Path:
    """A file with what a Lightning checkpoint of lit_lora holds (no weights needed for these checks)."""
    checkpoint = {"pytorch-lightning_version": "2.6.6", "state_dict": {"w": torch.zeros(2)}}
    if resumable:
        checkpoint.update(optimizer_states=[{}], loops={})
    if settings is not None:
        checkpoint[RECORD_KEY] = {"format": RECORD_FORMAT, "lit_lora_version": "0.1.0", "settings": settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def error_of(capsys: pytest.CaptureFixture, subcommand: str, root: Path, *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(subcommand, root, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.split("lit_lora: error: ", 1)[1].strip()


def test_a_truncated_checkpoint_is_refused(tmp_path, capsys, module_built):
    good = lightning_checkpoint(tmp_path / "good.ckpt", tiny_settings())
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    error = error_of(capsys, "fit", tmp_path / "run", "--ckpt_path", str(cut))
    assert error.startswith(f"ckpt_path: '{cut}' cannot be read as a checkpoint (RuntimeError: ")
    assert error.endswith(
        "it is truncated, damaged or not a torch file. Fix: pass another checkpoint, e.g. an "
        "earlier one from the same checkpoints folder."
    )


def test_a_safetensors_file_is_refused_by_its_content(tmp_path, capsys, module_built):
    weights = tmp_path / "renamed.ckpt"
    save_file({"w": torch.zeros(2)}, weights)
    assert is_safetensors(weights)
    error = error_of(capsys, "validate", tmp_path / "run", "--ckpt_path", str(weights))
    assert error.startswith(f"ckpt_path: '{weights}' is a safetensors file (weights only, like an adapter's ")


def test_a_torch_file_that_is_no_lightning_checkpoint_is_refused(tmp_path, capsys, module_built):
    other = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, other)
    assert error_of(capsys, "test", tmp_path / "run", "--ckpt_path", str(other)) == (
        f"ckpt_path: '{other}' is a torch file but not a Lightning checkpoint (no pytorch-lightning_version or "
        "state_dict). Fix: pass a .ckpt file written by fit."
    )


def test_fit_needs_a_checkpoint_with_state_to_resume(tmp_path, capsys, module_built):
    weights_only = lightning_checkpoint(tmp_path / "w.ckpt", tiny_settings(), resumable=False)
    error = error_of(capsys, "fit", tmp_path / "run", "--ckpt_path", str(weights_only))
    assert error.startswith(f"ckpt_path: '{weights_only}' holds weights but no optimizer or loop state to resume")
    assert read_checkpoint(weights_only, resume=False)["state_dict"]["w"].shape == (2,)


def test_a_missing_file_names_where_it_looked(tmp_path, capsys, module_built):
    error = error_of(capsys, "fit", tmp_path / "run", "--ckpt_path", "runs/nowhere/x.ckpt")
    assert error.startswith(f"ckpt_path: 'runs/nowhere/x.ckpt' does not exist (looked for {REPO}/runs/nowhere/x.ckpt)")


@pytest.mark.parametrize("url", ["https://example.com/last.ckpt", "http://example.com/x.ckpt", "s3://bucket/x.ckpt"])
def test_a_url_is_refused_without_being_fetched(url, tmp_path, capsys, module_built):
    error = error_of(capsys, "fit", tmp_path / "run", "--ckpt_path", url)
    assert error.startswith(f"ckpt_path: '{url}' is a URL; lit_lora loads local checkpoint files only")


def test_last_with_nothing_to_resume_is_an_error_naming_the_folder(tmp_path, capsys, module_built):
    error = error_of(capsys, "fit", tmp_path / "run", "--ckpt_path", "last")
    assert error.startswith(
        f"ckpt_path: 'last', but there is no last.ckpt to load in {tmp_path / 'run' / 'checkpoints'}."
    )


def test_best_names_the_file_to_pass(tmp_path, capsys, module_built):
    error = error_of(capsys, "validate", tmp_path / "run", "--ckpt_path", "best")
    assert error.endswith(
        f"Fix: pass the file, e.g. {tmp_path / 'run' / 'checkpoints' / 'best.ckpt'} (written by best_checkpoint)."
    )


def test_last_if_any_starts_fresh_or_resumes_the_newest_last(tmp_path):
    root = tmp_path / "run"
    config = parse(tiny_args("fit", root)).fit
    folder = root / "checkpoints"
    assert checkpoint_file(LAST_IF_ANY, "fit", config, folder) is None
    with pytest.raises(ConfigError, match="no last.ckpt to load"):
        checkpoint_file(LAST_IF_ANY, "validate", config, folder)
    older = lightning_checkpoint(folder / "last.ckpt")
    newer = lightning_checkpoint(folder / "last-v1.ckpt")
    lightning_checkpoint(folder / "step5.ckpt")
    (folder / "last.ckpt.partial").write_bytes(b"")  # an interrupted write is never a candidate
    os.utime(older, (1, 1))
    assert checkpoint_file("last", "fit", config, folder) == newer
    assert checkpoint_file(LAST_IF_ANY, "fit", config, folder) == newer


def test_a_resume_on_other_settings_stops_with_both_values_and_the_fix(tmp_path, capsys, module_built):
    trained = lightning_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tiny_settings())
    error = error_of(
        capsys,
        "fit",
        tmp_path / "run",
        "--ckpt_path",
        "last",
        "--model.quantization.mode",
        "none",
        "--model.lora.r",
        "4",
        "--model.lora.dropout",
        "0.1",  # dropout may change on a resume
    )
    assert error == (
        f"ckpt_path: {trained} was trained on other settings than this run configures: "
        "model.init_args.quantization.mode is nf4 there, none here; model.init_args.lora.r is 8 there, 4 here. "
        "Fix: set --model.init_args.quantization.mode nf4 --model.init_args.lora.r 8 (what the checkpoint was "
        "trained with), or train a new run without --ckpt_path in another trainer.default_root_dir."
    )


@pytest.mark.parametrize(
    ("option", "value", "recorded"),
    [
        ("--model.model_name_or_path", "assets", "model.init_args.model_name_or_path is assets/tiny-llama there"),
        ("--model.seed", "3", "model.init_args.seed is 0 there, 3 here"),
        ("--model.quantization.double_quant", "false", "model.init_args.quantization.double_quant is true there"),
    ],
)
def test_validate_on_another_base_is_refused(option, value, recorded, tmp_path, capsys, module_built):
    trained = lightning_checkpoint(tmp_path / "x.ckpt", tiny_settings())
    error = error_of(capsys, "validate", tmp_path / "run", "--ckpt_path", str(trained), option, value)
    assert error.startswith(f"ckpt_path: {trained} was trained on other settings than this run configures: {recorded}")


def test_an_older_checkpoint_is_compared_through_its_hyperparameters(tmp_path):
    hparams = {"model_name_or_path": "assets/tiny-llama", "random_init": True, "quantization": {"mode": "nf4"}}
    assert recorded_settings({"hyper_parameters": hparams}, tmp_path) == trained_settings(hparams)
    with pytest.raises(ConfigError, match=r"with a record of format 99; this lit_lora .* reads format 1"):
        recorded_settings({RECORD_KEY: {"format": 99, "lit_lora_version": "9.0", "settings": {}}}, tmp_path)


def test_an_adapter_path_trained_on_another_quantization_warns_with_both_values(tiny_adapters, tmp_path):
    adapter = tiny_adapters[0]  # trained on the nf4-quantized tiny base
    config = parse(
        tiny_args("fit", tmp_path, "--model.adapter_path", str(adapter), "--model.quantization.mode", "none")
    ).fit
    with pytest.warns(UserWarning) as warned:
        check_run_sources("fit", config, tmp_path / "checkpoints")
    assert [str(w.message) for w in warned] == [
        f"lit_lora: model.init_args.adapter_path '{adapter}' was trained on another base than this run's: "
        "model.init_args.quantization.mode is nf4 there, none here; model.init_args.quantization.compute_dtype is "
        "auto there, float32 here. Training goes on from it on this run's base; if that is not deliberate, set "
        "--model.init_args.quantization.mode nf4 --model.init_args.quantization.compute_dtype auto."
    ]
