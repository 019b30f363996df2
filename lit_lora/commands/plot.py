"""``python -m lit_lora plot``: a run's CSV logs drawn into one PNG."""

from __future__ import annotations

import csv
from pathlib import Path

from lit_lora.errors import ConfigError

# (logged column, panel title, log scale); train/loss and val/loss share the first panel.
PANELS = (
    ("train/loss", "loss", False),
    ("train/lr", "learning rate", False),
    ("train/grad_norm", "gradient norm", False),
    ("val/perplexity", "val perplexity", True),
)
# 10 x 7 inches at 100 dpi: 1000 x 700 pixels.
FIGURE_SIZE = (10, 7)
DPI = 100

Series = dict[str, tuple[list[float], list[float]]]


def find_metrics(run: Path) -> Path:
    """``run`` itself when it is a CSV file, else the newest ``metrics.csv`` below it."""
    if run.is_file():
        return run
    found = sorted(run.rglob("metrics.csv"), key=lambda path: path.stat().st_mtime) if run.is_dir() else []
    if not found:
        raise ConfigError(
            f"plot: no metrics.csv under '{run}'. Give the trainer.default_root_dir of a fit run with "
            "the default CSV logger, or the path of a metrics.csv."
        )
    return found[-1]


def read_series(metrics: Path) -> Series:
    """Each column of a Lightning ``metrics.csv`` as ``(steps, values)`` over its non-empty rows."""
    series: Series = {}
    with metrics.open(newline="") as file:
        for row in csv.DictReader(file):
            # Each row holds the metrics logged at one step; the other cells are empty.
            for name, value in row.items():
                if name in ("step", "epoch") or value in ("", None):
                    continue
                steps, values = series.setdefault(name, ([], []))
                steps.append(float(row["step"]))
                values.append(float(value))
    if not any(name in series for name, _, _ in PANELS):
        raise ConfigError(f"plot: '{metrics}' holds none of {', '.join(name for name, _, _ in PANELS)}.")
    return series


def draw(series: Series, title: str, output: Path) -> None:
    """Write the four panels of ``series`` to the PNG ``output``."""
    import matplotlib

    # No display is needed (servers, CI): render straight to the file.
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 2, figsize=FIGURE_SIZE, dpi=DPI)
    for ax, (name, label, log_scale) in zip(axes.flat, PANELS):
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name in series:
            # Dots too: a short run may log a single point, which a line alone would not show.
            ax.plot(*series[name], marker="o" if name.startswith("val/") else ".", label=name)
        if name == "train/loss" and "val/loss" in series:
            # Validation runs a few times per run: markers show where it was measured.
            ax.plot(*series["val/loss"], marker="o", linestyle="--", label="val/loss")
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {name} logged", ha="center", va="center", transform=ax.transAxes)
            continue
        if log_scale:
            ax.set_yscale("log")
        if len(ax.lines) > 1:
            ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=DPI)
    pyplot.close(figure)


def plot(run: str, output: str | None = None) -> Path:
    """Draw a run's train and val loss, learning rate, gradient norm and val perplexity per step into a PNG.

    Args:
        run: The run's folder (its ``trainer.default_root_dir``), whose newest
            ``lightning_logs/version_*/metrics.csv`` is drawn, or a ``metrics.csv`` itself.
        output: PNG file to write; default ``training.png`` in the run's folder.

    Returns:
        The path of the PNG.
    """
    metrics = find_metrics(Path(run))
    default_folder = Path(run) if Path(run).is_dir() else metrics.parent
    target = Path(output) if output is not None else default_folder / "training.png"
    draw(read_series(metrics), str(metrics), target)
    print(target)
    return target
