"""Watching a run: the progress bar's metrics, the CSV logs, and ``plot`` drawing them."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib import image

from lit_lora.callbacks.progress import RunProgressBar
from lit_lora.cli import main
from lit_lora.commands.plot import DPI, FIGURE_SIZE
from tests.helpers.parsing import parse
from tests.helpers.tiny import REPO, tiny_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOGGED = (
    "step",
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/supervised_tokens_per_sec",
    "val/loss",
    "val/perplexity",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of configs/tiny.yaml with the progress bar on, as the quickstart runs it."""
    root = tmp_path_factory.mktemp("plot") / "run"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield main(tiny_args("fit", root, "--trainer.enable_progress_bar", "true", "--trainer.max_epochs", "1")), root
    finally:
        os.chdir(cwd)


def assert_real_plot(png: Path) -> None:
    """``png`` is a PNG of the figure's size with lines and text on it, not a blank canvas."""
    assert png.read_bytes()[:8] == PNG_MAGIC
    pixels = image.imread(png)
    width, height = FIGURE_SIZE
    assert pixels.shape[:2] == (height * DPI, width * DPI)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 50
    assert (pixels[..., :3] < 0.9).mean() > 0.01  # more than a white page with a frame


def test_fit_writes_csv_logs_under_the_run_folder(run):
    cli, root = run
    metrics = root / "lightning_logs" / "version_0" / "metrics.csv"
    with metrics.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert set(LOGGED) <= set(rows[0])
    assert [row["val/loss"] for row in rows if row["val/loss"]]
    assert cli.trainer.logger.log_dir == str(metrics.parent)
    # save_dir follows default_root_dir by a link, so the saved config does not fix it.
    saved = yaml.safe_load((metrics.parent / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert "save_dir" not in saved["trainer"]["logger"].get("init_args", {})


def test_progress_bar_shows_loss_lr_tokens_per_second_and_time_left(run):
    cli, _ = run
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, RunProgressBar)
    metrics = bar.get_metrics(cli.trainer, cli.model)
    assert {"loss", "lr", "tok/s", "val_loss", "eta"} <= set(metrics)
    assert metrics["eta"] == "0:00:00"  # the run is over
    assert metrics["tok/s"] > 0


def test_plot_draws_the_runs_logs(run, capsys):
    _, root = run
    png = main(["plot", str(root)])
    assert png == root / "training.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert_real_plot(png)


def test_plot_takes_a_metrics_file_and_an_output(tmp_path):
    metrics = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss,train/lr,train/grad_norm,val/loss,val/perplexity"]
    rows += [f"0,{step},{3 - step / 10},{1e-3 * step},{1 + step % 3},," for step in range(1, 20)]
    rows += ["0,19,,,,1.5,4.48"]
    metrics.write_text("\n".join(rows) + "\n")
    png = main(["plot", str(metrics), "--output", str(tmp_path / "out" / "curves.png")])
    assert png == tmp_path / "out" / "curves.png"
    assert_real_plot(png)


@pytest.mark.parametrize("where", ["empty", "absent"])
def test_plot_without_logs_names_the_path(tmp_path, capsys, where):
    folder = tmp_path / where
    if where == "empty":
        folder.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(folder)])
    assert exit_info.value.code == 2
    assert f"no metrics.csv under '{folder}'" in capsys.readouterr().err


@pytest.mark.parametrize("logger", ["TensorBoardLogger", "WandbLogger"])
def test_other_loggers_are_chosen_in_yaml_and_log_under_the_run_folder(tmp_path, logger):
    config = tmp_path / "logger.yaml"
    config.write_text(f"trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.{logger}\n")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        parsed = parse([*tiny_args("fit", tmp_path / "run"), "--config", str(config)]).fit
    finally:
        os.chdir(cwd)
    assert parsed.trainer.logger.class_path == f"lightning.pytorch.loggers.{logger}"
    assert parsed.trainer.logger.init_args.save_dir == str(tmp_path / "run")


def test_a_tensorboard_run_writes_its_scalars_under_the_run_folder(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(REPO)
    config = tmp_path / "logger.yaml"
    config.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.TensorBoardLogger\n")
    main(
        tiny_args(
            "fit",
            tmp_path / "run",
            "--config",
            str(config),
            "--trainer.max_steps",
            "3",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.limit_val_batches",
            "0",
        )
    )
    [events] = (tmp_path / "run" / "lightning_logs").rglob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events.parent)).Reload()
    assert [event.step for event in scalars.Scalars("train/loss")] == [0, 1, 2]
    assert {"train/lr", "train/grad_norm"} <= set(scalars.Tags()["scalars"])
