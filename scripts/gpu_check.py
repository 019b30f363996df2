"""The prepared GPU check: every step that only a GPU can show, each under its own time budget.

Run through ``scripts/gpu_check.sh``, which installs the wheels of ``scripts/gpu_wheels.sh``
first. The steps are one table (:data:`STEPS`): name, time budget, the bash command,
the files and modules it needs, and how its figures are read. Each step runs under
coreutils ``timeout`` with its own log, so a failure or a hang costs that step alone;
``report.json`` and ``gpu_check.log`` (every step's output, one section each) are
written under ``--out`` after every step, so a check cut short still leaves a report.
``--dry-run`` runs the plumbing on CPU (argument handling, step selection, the checks of
referenced files, the report) and prints each command instead of running it.

    bash scripts/gpu_check.sh --out /tmp/gpu_check          # on a GPU machine
    bash scripts/gpu_check.sh --dry-run --out /tmp/gpu_check
    python scripts/gpu_check.py --list
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPORT_VERSION = 1
# The steps' budgets together stay within this (the issue's 8 minutes), installation aside.
TOTAL_BUDGET_S = 480
# Seconds between the TERM that ends a step at its budget and the KILL that follows.
KILL_GRACE_S = 10
# A step prints its figures on a line starting with this, as one JSON object.
FIGURES_PREFIX = "GPU_CHECK_FIGURES "
LOG_TAIL_LINES = 30
STATUSES = ("passed", "failed", "timeout", "skipped", "missing", "planned")
# coreutils timeout exits with 124 when the budget ran out (137 when it had to KILL).
TIMEOUT_CODES = (124, 137)

# The fit overrides that move configs/tiny.yaml onto the GPU in bf16, as a QLoRA user runs it.
TINY_ON_GPU = (
    "--config configs/tiny.yaml --trainer.accelerator gpu --trainer.precision bf16-mixed "
    "--model.quantization.compute_dtype bfloat16 --trainer.enable_progress_bar false"
)
TASKS = "{python} scripts/gpu_check_tasks.py"


def parse_pytest(log: str) -> dict[str, Any]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped in 12.3s``).

    Args:
        log: The step's whole output.
    """
    lines = [line for line in log.splitlines() if re.search(r"\b(passed|failed|error|skipped|deselected)\b", line)]
    if not lines:
        return {}
    return {word: int(count) for count, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", lines[-1])}


@dataclass(frozen=True)
class Step:
    """One step of the check.

    Args:
        name: Short identifier, used by ``--steps``/``--skip`` and in the report.
        budget_s: Seconds the step may run before ``timeout`` ends it.
        command: A bash command run from the repository root, a ``str.format`` template
            (literal braces doubled): ``{python}``, ``{work}``, ``{out}`` (interpreter, work folder, --out).
        description: What the step shows, for the report and ``--list``.
        requires_files: Repository files the step reads; absent ones make it ``missing``.
        requires_modules: Python modules it imports; absent ones make it ``skipped``
            (checked on a real run only: the dry run checks the plumbing, not the image).
        parse: Reads extra figures from the step's log, beside its ``GPU_CHECK_FIGURES`` lines.
    """

    name: str
    budget_s: int
    command: str
    description: str
    requires_files: tuple[str, ...] = ()
    requires_modules: tuple[str, ...] = ()
    parse: Callable[[str], dict[str, Any]] | None = None


def strategy_step(name: str, budget_s: int, modules: tuple[str, ...] = ()) -> Step:
    """A few steps of the tiny config under ``configs/strategies/<name>.yaml`` on one GPU, then its export.

    Args:
        name: The strategy config's name, also the step's.
        budget_s: The step's time budget.
        modules: Python modules the strategy needs (``deepspeed``).
    """
    root = f"{{work}}/{name}"
    return Step(
        name,
        budget_s,
        f"{{python}} -m lit_lora fit {TINY_ON_GPU} --config configs/strategies/{name}.yaml --trainer.devices 1 "
        f"--trainer.max_steps 4 --trainer.default_root_dir {root} && "
        f"{TASKS} check-adapter {root}/adapter",
        f"configs/strategies/{name}.yaml on one GPU: 4 optimizer steps of the tiny config, adapter exported",
        requires_files=("configs/tiny.yaml", f"configs/strategies/{name}.yaml"),
        requires_modules=modules,
    )


STEPS: tuple[Step, ...] = (
    Step(
        "cuda_tests",
        140,
        "{python} -m pytest -q -p no:cacheprovider -m cuda "
        "$(grep -rlE 'pytest\\.mark\\.cuda' tests --include='test_*.py' | sort)",
        "every test marked cuda (QLoRA NF4 in bf16-mixed, paged 8-bit AdamW, LoRA gradients through "
        "4-bit layers with checkpointing, selective checkpointing, exact resume, merge, packing isolation)",
        requires_files=("tests/integration/test_cuda.py",),
        parse=parse_pytest,
    ),
    Step(
        "fit_tiny",
        30,
        f"{TASKS} measured-fit {TINY_ON_GPU} --trainer.max_steps 10 --trainer.default_root_dir {{work}}/fit_tiny "
        f"&& {TASKS} check-adapter {{work}}/fit_tiny/adapter",
        "configs/tiny.yaml on the GPU in bf16 with NF4: 10 optimizer steps, peak memory against the estimate",
        requires_files=("configs/tiny.yaml",),
    ),
    Step(
        "fit_1b",
        80,
        f"{TASKS} llama-1b {{work}}/llama-1b && {TASKS} measured-fit --config {{work}}/llama-1b/fit.yaml "
        "--trainer.max_steps 10 --trainer.default_root_dir {work}/fit_1b",
        "a Llama-3.2-1B-shaped model with random weights, bf16, NF4, the benchmark recipe: 10 optimizer "
        "steps, peak memory against the estimate",
        requires_files=("configs/benchmark.yaml", "assets/tiny-llama/tokenizer.json"),
    ),
    Step(
        "benchmark_1b",
        120,
        f"{TASKS} llama-1b {{work}}/llama-1b && {{python}} scripts/benchmark.py --config {{work}}/llama-1b/fit.yaml "
        f"--device cuda --max_steps 20 --output none --json {{work}}/benchmark_1b.json && "
        f"{TASKS} benchmark-figures {{work}}/benchmark_1b.json",
        "scripts/benchmark.py on the 1B model: lit_lora against transformers Trainer + PEFT, same recipe, "
        "20 steps each: tokens/s and peak memory",
        requires_files=("scripts/benchmark.py", "configs/benchmark.yaml"),
    ),
    strategy_step("fsdp_qlora", 35),
    strategy_step("deepspeed_zero2", 35, ("deepspeed",)),
    strategy_step("deepspeed_zero3", 35, ("deepspeed",)),
)


@dataclass
class StepResult:
    """What the report says of one step (see docs/gpu.md for each field)."""

    name: str
    description: str
    command: str
    budget_s: int
    status: str
    seconds: float = 0.0
    returncode: int | None = None
    reason: str | None = None
    log: str | None = None
    log_tail: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def figures_from_log(log: str, parse: Callable[[str], dict[str, Any]] | None) -> dict[str, Any]:
    """The figures of a step: its parser's, then every ``GPU_CHECK_FIGURES`` line's (later lines win).

    Args:
        log: The step's whole output.
        parse: The step's own parser, if any.
    """
    figures = dict(parse(log)) if parse is not None else {}
    for line in log.splitlines():
        if line.startswith(FIGURES_PREFIX):
            try:
                figures.update(json.loads(line[len(FIGURES_PREFIX) :]))
            except json.JSONDecodeError:
                continue  # a truncated line from a step cut short: its other lines still count
    return figures


def run_step(step: Step, command: str, log_path: Path, env: dict[str, str]) -> StepResult:
    """Run one step's ``command`` under its budget, its output into ``log_path``.

    Args:
        step: The step (budget, parser).
        command: Its command with the placeholders filled in.
        log_path: Where stdout and stderr go.
        env: The environment of the step.
    """
    result = StepResult(step.name, step.description, command, step.budget_s, "failed", log=str(log_path))
    start = time.monotonic()
    with log_path.open("w") as log:
        log.write(f"$ {command}\n")
        log.flush()
        # Not --foreground: timeout then signals the command's children too (pytest's, benchmark's).
        process = subprocess.run(
            ["timeout", "-k", str(KILL_GRACE_S), str(step.budget_s), "bash", "-c", command],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    result.seconds = round(time.monotonic() - start, 2)
    result.returncode = process.returncode
    text = log_path.read_text(errors="replace")
    if process.returncode == 0:
        result.status = "passed"
    elif process.returncode in TIMEOUT_CODES:
        result.status, result.reason = "timeout", f"still running after its budget of {step.budget_s} s"
    else:
        result.reason = f"exit status {process.returncode}"
    result.log_tail = text.splitlines()[-LOG_TAIL_LINES:]
    result.figures = figures_from_log(text, step.parse)
    return result


def select_steps(steps: Sequence[Step], only: Sequence[str], skip: Sequence[str]) -> set[str]:
    """Names of the steps to run: ``only`` (all when empty) less ``skip``.

    Args:
        steps: The table of steps.
        only: ``--steps``: the names to run, or empty for all.
        skip: ``--skip``: the names to leave out.

    Raises:
        ValueError: A name is not a step's (the message names the valid ones).
    """
    names = [step.name for step in steps]
    unknown = [name for name in [*only, *skip] if name not in names]
    if unknown:
        raise ValueError(f"unknown step {', '.join(unknown)}; the steps are {', '.join(names)}")
    return {name for name in (only or names) if name not in skip}


def precheck(step: Step, dry_run: bool) -> tuple[str, str] | None:
    """``(status, reason)`` when the step cannot run here, else ``None``.

    Args:
        step: The step.
        dry_run: Whether this is a dry run, which checks files only, not the installed modules.
    """
    absent = [path for path in step.requires_files if not (REPO / path).exists()]
    if absent:
        return "missing", f"not in this checkout: {', '.join(absent)}"
    if not dry_run:
        modules = [name for name in step.requires_modules if importlib.util.find_spec(name) is None]
        if modules:
            return "skipped", f"not installed: {', '.join(modules)}"
    return None


def machine() -> dict[str, Any]:
    """Host, GPU and package versions, from ``gpu_check_tasks.py machine``: the driver never touches CUDA."""
    task = [sys.executable, str(REPO / "scripts/gpu_check_tasks.py"), "machine"]
    found = subprocess.run(task, capture_output=True, text=True, timeout=120)
    info = json.loads(found.stdout.splitlines()[-1]) if found.returncode == 0 else None
    info = info or {"gpu": None, "probe_error": found.stderr[-500:]}
    return {"host": socket.gethostname(), "python": sys.version.split()[0], **info}


def write_report(out: Path, report: dict[str, Any], results: Sequence[StepResult]) -> None:
    """Write ``report.json`` and ``gpu_check.log`` (each step's log as one section) under ``out``.

    Args:
        out: The report folder.
        report: The report's fields other than ``steps`` and ``summary``.
        results: The steps done so far.
    """
    report["steps"] = [vars(result) for result in results]
    counts = {status: 0 for status in STATUSES}
    for result in results:
        counts[result.status] += 1
    report["summary"] = counts
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    sections = []
    for result in results:
        body = Path(result.log).read_text(errors="replace") if result.log and Path(result.log).exists() else ""
        sections.append(f"===== {result.name}: {result.status} ({result.seconds} s of {result.budget_s})\n{body}")
    (out / "gpu_check.log").write_text("\n".join(sections))


def now() -> str:
    """The UTC time as ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_check(args: argparse.Namespace) -> int:
    """Run (or, dry, plan) the selected steps and write the report; the exit status of the check.

    Args:
        args: The parsed command line (:func:`build_parser`).

    Raises:
        ValueError: An unknown step name, or no CUDA device on a real run.
    """
    selected = select_steps(STEPS, args.steps, args.skip)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "dry_run": args.dry_run,
        "started": now(),
        "finished": None,
        "machine": {"host": socket.gethostname(), "python": sys.version.split()[0], "gpu": None}
        if args.dry_run
        else machine(),
        "install": {"status": args.install_status, "seconds": args.install_seconds},
        "budget_s": sum(step.budget_s for step in STEPS if step.name in selected),
        "work": str(work),
    }
    if not args.dry_run and report["machine"].get("gpu") is None:
        found = report["machine"].get("probe_error", "torch sees no GPU")
        raise ValueError(f"no CUDA device here ({found}); --dry-run checks the plumbing without one")
    out.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # The 1B model's random weights (several GB) go to the work folder, not ~/.cache.
        "LIT_LORA_CACHE": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    results: list[StepResult] = []
    for step in STEPS:
        values = {"python": sys.executable, "work": str(work), "out": str(out)}
        command = step.command.format(**values)
        blocked = precheck(step, args.dry_run)
        if step.name not in selected:
            result = StepResult(step.name, step.description, command, step.budget_s, "skipped", reason="not selected")
        elif blocked is not None:
            status, reason = blocked
            result = StepResult(step.name, step.description, command, step.budget_s, status, reason=reason)
        elif args.dry_run:
            result = StepResult(step.name, step.description, command, step.budget_s, "planned", reason="dry run")
        else:
            print(f"gpu_check: {step.name} (budget {step.budget_s} s)", flush=True)
            # A rerun starts its run folder afresh (checkpoints, adapter); the model cache stays.
            shutil.rmtree(work / step.name, ignore_errors=True)
            result = run_step(step, command, work / "logs" / f"{step.name}.log", env)
        print(f"gpu_check: {step.name}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        results.append(result)
        write_report(out, report, results)
    report["finished"] = now()
    write_report(out, report, results)
    print(f"gpu_check: report in {out / 'report.json'}")
    return 1 if any(result.status in ("failed", "timeout") for result in results) else 0


def build_parser() -> argparse.ArgumentParser:
    """The check's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="report folder ($OUT)")
    parser.add_argument(
        "--work",
        default="/tmp/lit_lora_gpu_check",
        help="folder for runs, models and step logs (large; only report.json and gpu_check.log go to --out)",
    )
    parser.add_argument("--dry-run", action="store_true", help="check the plumbing on CPU, run no step")
    parser.add_argument("--steps", type=lambda v: v.split(","), default=[], help="comma-separated steps to run")
    parser.add_argument("--skip", type=lambda v: v.split(","), default=[], help="comma-separated steps to leave out")
    parser.add_argument("--list", action="store_true", help="print the steps and their budgets, then exit")
    # Set by scripts/gpu_check.sh, which installs the wheels before this runs.
    parser.add_argument("--install-status", default="not run", help=argparse.SUPPRESS)
    parser.add_argument("--install-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0: nothing failed or timed out).

    Args:
        argv: The command line, ``sys.argv[1:]`` when ``None``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for step in STEPS:
            print(f"{step.name:<16} {step.budget_s:>4} s  {step.description}")
        print(f"{'total':<16} {sum(step.budget_s for step in STEPS):>4} s")
        return 0
    try:
        return run_check(args)
    except ValueError as error:
        parser.error(str(error))  # exit status 2, before any step ran


if __name__ == "__main__":
    sys.exit(main())
