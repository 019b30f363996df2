"""Training with packed sequences end to end, and resuming such a run in the middle of an epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_lora.cli import main

REPO = Path(__file__).resolve().parents[2]

# max_length 256 fits 3 quickstart examples (68-86 tokens) per pack: ~125 packs, 16
# batches of 8, 8 optimizer steps per epoch. Dropout off leaves nothing random, so a
# resumed run must match exactly.
PACKED = (
    "--data.packing",
    "true",
    "--data.max_length",
    "256",
    "--data.batch_size",
    "8",
    "--trainer.max_epochs",
    "1",
    "--model.lora.dropout",
    "0.0",
    "--step_checkpoint.every_n_train_steps",
    "2",
)


def fit(root: Path, *extra: str):
    return main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            *PACKED,
            *extra,
        ]
    )


def test_packed_fit_resumed_mid_epoch_ends_like_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names repo-relative paths
    whole = fit(tmp_path / "whole")
    loader = whole.trainer.train_dataloader
    packs = len(loader.batch_sampler.sampler)
    assert packs < 0.4 * len(whole.datamodule.dataset("train"))  # about 3 examples per row
    assert whole.trainer.global_step == 8 and torch.isfinite(whole.trainer.callback_metrics["train/loss"])

    # Step 6 is after batch 12 of 16: the resumed run trains batches 13-16 of the same packing.
    middle = tmp_path / "whole" / "checkpoints" / "step6.ckpt"
    loader_state = torch.load(middle, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 0, "batches": 12, "num_devices": 1}] and len(loader) == 16
    resumed = fit(tmp_path / "resumed", "--ckpt_path", str(middle))
    assert resumed.trainer.global_step == whole.trainer.global_step
    expected = {name: p for name, p in whole.model.named_parameters() if p.requires_grad}
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], rtol=0, atol=0, msg=name)


def test_split_packed_fit_resumed_mid_epoch_ends_like_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    # Cut at the pack boundaries, the 27,393 tokens fill 108 packs of 256: 14 batches, 7 steps.
    split = ("--data.packing_split", "true")
    whole = fit(tmp_path / "whole", *split)
    loader = whole.trainer.train_dataloader
    tokens = sum(len(ids) for ids in whole.datamodule.dataset("train")["input_ids"])
    assert len(loader.batch_sampler.sampler) == -(-tokens // 256) and len(loader) == 14
    assert whole.trainer.global_step == 7 and torch.isfinite(whole.trainer.callback_metrics["train/loss"])
    # Step 6 is after batch 12 of 14: the resumed run trains batches 13-14 of the same packs.
    middle = tmp_path / "whole" / "checkpoints" / "step6.ckpt"
    loader_state = torch.load(middle, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 0, "batches": 12, "num_devices": 1}]
    resumed = fit(tmp_path / "resumed", *split, "--ckpt_path", str(middle))
    assert resumed.trainer.global_step == whole.trainer.global_step
    expected = {name: p for name, p in whole.model.named_parameters() if p.requires_grad}
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("option", ["--data.group_by_length"])
def test_length_grouped_fit_runs(tmp_path, monkeypatch, option):
    monkeypatch.chdir(REPO)
    cli = main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_epochs",
            "1",
            option,
            "true",
        ]
    )
    assert cli.trainer.global_step > 0 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
