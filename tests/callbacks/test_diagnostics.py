"""Training diagnostics: the rules on synthetic sequences, the callback's once-only
warnings and early stop, divergence stopping a real run, and ``best.ckpt``."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_lora.callbacks.diagnostics import (
    TrainingDiagnostics,
    TrainingDiverged,
    is_exploded,
    is_flat,
    is_overfitting,
    is_spike,
    relative_change,
)
from lit_lora.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_spike_is_over_factor_times_the_median():
    history = [1.0, 1.1, 0.9, 50.0, 1.0]  # one earlier outlier does not move the median
    assert is_spike(history, 3.01, 3.0)
    assert not is_spike(history, 3.0, 3.0)
    assert not is_spike([], 100.0, 3.0)


def test_flat_is_within_tolerance_of_the_first_loss():
    assert is_flat([2.0, 2.01, 1.99, 2.0], 0.01)
    assert not is_flat([2.0, 2.01, 1.97], 0.01)


def test_overfitting_needs_val_rising_patience_times_while_train_falls():
    assert is_overfitting([1.0, 1.1, 1.2], [2.0, 1.5, 1.0], patience=2)
    assert not is_overfitting([1.0, 1.1, 1.2], [2.0, 1.5, 2.5], patience=2)  # train rose too
    assert not is_overfitting([1.0, 1.2, 1.1], [2.0, 1.5, 1.0], patience=2)  # not every time
    assert not is_overfitting([1.0, 1.1], [2.0, 1.5], patience=2)  # too few evaluations


def test_exploded_is_above_chance_and_twice_the_first_loss():
    chance = math.log(49152)  # 10.80
    assert is_exploded(14.2, first_loss=0.59, chance_loss=chance)  # the quickstart at lr 10
    assert not is_exploded(10.8, first_loss=0.59, chance_loss=chance)
    assert not is_exploded(11.0, first_loss=10.9, chance_loss=chance)  # random init starts near chance
    assert is_exploded(21.9, first_loss=10.9, chance_loss=chance)


def test_relative_change_of_all_weights_together():
    before = [torch.tensor([3.0, 0.0]), torch.zeros(2)]
    assert relative_change(before, [torch.tensor([3.0, 4.0]), torch.zeros(2)]) == pytest.approx(4 / 3)
    assert relative_change(before, before) == 0.0
    assert relative_change([torch.zeros(1)], [torch.ones(1)]) == 1.0


class Run:
    """Feeds one optimizer step at a time through the callback's hooks, as Lightning would."""

    def __init__(self, callback: TrainingDiagnostics, lr: float = 1e-3) -> None:
        self.callback = callback
        self.weight = torch.nn.Parameter(torch.ones(4))
        self.optimizer = SimpleNamespace(param_groups=[{"params": [self.weight], "lr": lr}], defaults={"lr": lr})
        self.trainer = SimpleNamespace(
            callback_metrics={},
            optimizers=[self.optimizer],
            global_step=0,
            precision="32-true",
            precision_plugin=SimpleNamespace(),
            gradient_clip_val=0.3,
            checkpoint_callback=None,
            sanity_checking=False,
            should_stop=False,
        )
        self.module = torch.nn.Module()
        self.module.weight = self.weight

    def step(self, loss: float, grad_norm: float = 1.0, grad: float = 0.1) -> None:
        self.weight.grad = torch.full((4,), grad)
        self.callback.on_before_optimizer_step(self.trainer, self.module, self.optimizer)
        self.trainer.global_step += 1
        self.trainer.callback_metrics.update(
            {"train/loss": torch.tensor(loss), "train/grad_norm": torch.tensor(grad_norm)}
        )
        self.callback.on_train_batch_end(self.trainer, self.module, None, None, 0)

    def validate(self, val_loss: float) -> None:
        self.trainer.callback_metrics["val/loss"] = torch.tensor(val_loss)
        self.callback.on_validation_end(self.trainer, self.module)


def messages(record) -> list[str]:
    return [str(w.message) for w in record if "diagnostics" in str(w.message)]


def quiet(**kwargs) -> TrainingDiagnostics:
    """Only the checks a test names are on."""
    return TrainingDiagnostics(**{"flat_loss_steps": 0, "stale_every_n_steps": 0, "keep_last_good": False, **kwargs})


def test_loss_and_grad_norm_spikes_warn_once_each(recwarn):
    run = Run(quiet(window=4, loss_spike_factor=3.0, grad_norm_spike_factor=10.0))
    for _ in range(4):
        run.step(2.0, grad_norm=1.0)
    run.step(5.9, grad_norm=9.9)
    assert messages(recwarn) == []
    run.step(6.1, grad_norm=10.1)
    run.step(50.0, grad_norm=100.0)
    found = messages(recwarn)
    assert len(found) == 2
    assert "loss jumped to 6.1" in found[0] and "model.init_args.optimizer.init_args.lr" in found[0]
    assert "gradient norm jumped to 10.1" in found[1] and "trainer.gradient_clip_val" in found[1]


def test_no_spike_before_the_window_is_full(recwarn):
    run = Run(quiet(window=4))
    run.step(1.0)
    run.step(100.0, grad_norm=1000.0)
    assert messages(recwarn) == []


def test_flat_loss_from_the_start_names_the_learning_rate(recwarn):
    run = Run(quiet(flat_loss_steps=3, flat_loss_tolerance=0.01), lr=1e-7)
    for loss in (2.0, 2.01, 1.995, 0.5):
        run.step(loss)
    [message] = messages(recwarn)
    assert "first 3 steps" in message and "1e-07" in message and "target_modules" in message
    moving = Run(quiet(flat_loss_steps=3))
    for loss in (2.0, 1.9, 1.8):
        moving.step(loss)
    assert len(messages(recwarn)) == 1


def test_weights_that_stopped_changing_warn_unless_the_schedule_ended(recwarn):
    run = Run(quiet(stale_every_n_steps=2, stale_tolerance=1e-4))
    run.step(1.0)
    run.step(1.0)  # step 2: first copy
    run.weight.data += 1.0
    run.step(1.0)
    run.step(1.0)  # step 4: changed by 50%
    assert messages(recwarn) == []
    run.step(1.0)
    run.step(1.0)  # step 6: unchanged
    [message] = messages(recwarn)
    assert "changed by only 0.00e+00" in message and "over the last 2 steps" in message
    decayed = Run(quiet(stale_every_n_steps=2))
    for lr in (1e-3, 1e-3, 1e-5, 1e-5):  # a cosine tail: small updates are expected
        decayed.optimizer.param_groups[0]["lr"] = lr
        decayed.step(1.0)
    assert len(messages(recwarn)) == 1


def test_overfitting_warns_and_early_stop_waits_for_patience(recwarn):
    run = Run(quiet(overfit_patience=2, early_stop_patience=3))
    for train, val in [(3.0, 2.0), (2.5, 2.1), (2.0, 2.2)]:
        run.step(train)
        run.validate(val)
    [message] = messages(recwarn)
    assert "overfitting" in message and "best.ckpt" in message and "early_stop_patience" in message
    assert not run.trainer.should_stop
    run.step(1.5)
    run.validate(2.3)
    assert run.trainer.should_stop


def test_early_stop_is_off_by_default():
    run = Run(quiet())
    for val in (1.0, 2.0, 3.0, 4.0, 5.0):
        run.step(1.0)
        run.validate(val)
    assert not run.trainer.should_stop


def test_nan_gradients_stop_before_the_update():
    run = Run(quiet(), lr=10.0)
    run.step(1.0)
    with pytest.raises(TrainingDiverged, match=r"step 2: the gradients are NaN.*step 0 or earlier.*lr, set to 10\.0"):
        run.step(1.0, grad=math.nan)
    assert run.trainer.global_step == 1


def test_a_finite_loss_past_chance_stops():
    run = Run(quiet())
    run.module.chance_loss = lambda: 5.0
    run.callback.on_train_start(run.trainer, run.module)
    run.step(1.0)
    run.step(4.9)  # over twice the first loss, but not past chance
    with pytest.raises(
        TrainingDiverged, match=r"step 3: the loss exploded to 5\.1, worse than guessing uniformly \(5\)"
    ):
        run.step(5.1)


def test_inf_loss_stops_and_fp16_names_bf16():
    run = Run(quiet())
    run.trainer.precision = "16-true"
    with pytest.raises(TrainingDiverged, match=r"the loss is inf.*bf16-mixed instead of 16-true"):
        run.step(math.inf)


def test_stop_on_divergence_false_only_warns(recwarn):
    run = Run(quiet(stop_on_divergence=False))
    run.step(math.nan, grad=math.nan)
    assert len(messages(recwarn)) == 1


def tiny(root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        "configs/tiny.yaml",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def test_best_checkpoint_is_the_epoch_with_the_lowest_val_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(
            tiny(
                tmp_path,
                "--trainer.max_epochs",
                "3",
                "--trainer.limit_train_batches",
                "4",
                "--trainer.limit_val_batches",
                "1",
            )
        )
    folder = tmp_path / "checkpoints"
    [log] = tmp_path.rglob("metrics.csv")
    val = {int(row["epoch"]): float(row["val/loss"]) for row in csv.DictReader(log.open()) if row.get("val/loss")}
    assert len(val) == 3
    [best] = folder.glob(f"epoch{min(val, key=val.get):02d}-*.ckpt")
    expected = adapter_weights(best)
    found = adapter_weights(folder / "best.ckpt")
    assert expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected)


def test_a_diverging_run_keeps_the_last_good_state_and_resumes_at_a_lower_lr(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(
            tiny(
                tmp_path / "run",
                "--model.class_path",
                "tests.helpers.diverging.DivergingModule",
                "--model.init_args.optimizer.init_args.lr",
                "10",
                "--step_checkpoint.every_n_train_steps",
                "2",
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "training diverged at step 3: the gradients are NaN or Inf" in err
    assert "model.init_args.optimizer.init_args.lr, set to 10.0" in err and "trainer.gradient_clip_val" in err
    folder = tmp_path / "run" / "checkpoints"
    # Step 3 trained with the weights after step 2, so those are suspect too: last.ckpt
    # goes back to step 1, the newest state whose loss was seen healthy.
    assert f"{folder / 'last.ckpt'} now holds step 1" in err
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step2.ckpt"]
    checkpoint = torch.load(folder / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 1
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 10.0
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())
    assert not (tmp_path / "run" / "adapter").exists()  # no export of a broken adapter
    # Resuming with a lower learning rate uses it, not the checkpoint's.
    resumed = main(
        tiny(
            tmp_path / "run",
            "--ckpt_path",
            "last",
            "--model.init_args.optimizer.init_args.lr",
            "0.002",
            "--trainer.max_steps",
            "4",
            "--trainer.log_every_n_steps",
            "1",
        )
    )
    assert "optimizer settings, not the checkpoint's: lr 10.0 -> 0.002" in caplog.text
    assert resumed.trainer.global_step == 4
    assert resumed.trainer.optimizers[0].param_groups[0]["initial_lr"] == 0.002
    [log] = (tmp_path / "run").rglob("metrics.csv")
    lrs = [float(row["train/lr"]) for row in csv.DictReader(log.open()) if row.get("train/lr")]
    assert lrs and max(lrs) == pytest.approx(0.002)  # warmup is over at step 1 of 4 (ratio 0.1)
    assert math.isfinite(float(resumed.trainer.callback_metrics["train/loss"]))


def test_state_dict_carries_the_windows_first_loss_and_patience_over(recwarn):
    # One run of 6 steps and 3 evaluations, and the same run resumed after 4 steps and
    # 2 evaluations from its state_dict: the checks see the same history.
    def settings():
        return quiet(window=3, loss_spike_factor=3.0, flat_loss_steps=5, early_stop_patience=2)

    losses, val_losses = [2.0, 2.1, 1.9, 2.0, 2.05, 1.95], [1.0, 1.2, 1.3]
    whole, first = Run(settings()), Run(settings())
    for run, steps in ((whole, 6), (first, 4)):
        for index in range(steps):
            run.step(losses[index])
            if index % 2 == 1:
                run.validate(val_losses[index // 2])
    state = first.callback.state_dict()
    assert state["first_loss"] == 2.0 and state["losses"] == pytest.approx([2.1, 1.9, 2.0])
    resumed = Run(settings())
    resumed.callback.load_state_dict(state)
    assert not resumed.trainer.should_stop
    for index in (4, 5):
        resumed.step(losses[index])
    resumed.validate(val_losses[2])
    assert resumed.callback.state_dict() == whole.callback.state_dict()
    # Two evaluations without a lower val loss across the resume: patience is used up.
    assert resumed.trainer.should_stop and whole.trainer.should_stop
    # The flat-loss window of 5 steps spanned the resume and warned once, in each run.
    assert [m for m in messages(recwarn) if "loss moved less than" in m] == []  # 2.0 -> 1.9 is 5%: not flat
    assert len(state["first_losses"]) == 4


def test_a_resumed_fit_ends_with_the_diagnostics_of_an_uninterrupted_one(tmp_path, monkeypatch):
    # Dropout off: the resumed epoch then trains exactly as the uninterrupted one did.
    monkeypatch.chdir(REPO)
    short = (
        *("--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", "--data.batch_size", "2"),
        *("--trainer.num_sanity_val_steps", "0", "--model.quantization.mode", "none", "--model.lora.dropout", "0.0"),
    )
    checks = ("--diagnostics.window", "2", "--diagnostics.early_stop_patience", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = main(tiny(tmp_path / "whole", *short, *checks))
        [epoch0] = (tmp_path / "whole" / "checkpoints").glob("epoch00-*.ckpt")
        resumed = main(tiny(tmp_path / "resumed", *short, *checks, "--ckpt_path", str(epoch0)))
    [expected] = [c for c in whole.trainer.callbacks if isinstance(c, TrainingDiagnostics)]
    [actual] = [c for c in resumed.trainer.callbacks if isinstance(c, TrainingDiagnostics)]
    state = expected.state_dict()
    assert len(state["first_losses"]) == 4 and len(state["val_losses"]) == 2  # 2 epochs of 2 steps
    assert actual.state_dict() == state
