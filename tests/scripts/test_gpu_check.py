"""scripts/gpu_check.sh: the dry run's report on CPU, the step runner, and the steps' Python tasks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]
STEP_BUDGETS = {
    "cuda_tests": 140,
    "fit_tiny": 30,
    "fit_1b": 80,
    "benchmark_1b": 120,
    "fsdp_qlora": 35,
    "deepspeed_zero2": 35,
    "deepspeed_zero3": 35,
}
STRATEGIES = ("fsdp_qlora", "deepspeed_zero2", "deepspeed_zero3")
STEP_KEYS = {
    "name",
    "description",
    "command",
    "budget_s",
    "status",
    "seconds",
    "returncode",
    "reason",
    "log",
    "log_tail",
    "figures",
}


def load_script(name: str) -> ModuleType:
    """A script of scripts/ as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up while the class is made.
    sys.modules[f"scripts_{name}"] = module
    spec.loader.exec_module(module)
    return module


def dry_run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """``bash scripts/gpu_check.sh --dry-run`` into ``tmp_path/out``, its work folder ``tmp_path/work``."""
    command = ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(tmp_path / "out")]
    command += ["--work", str(tmp_path / "work"), *options]
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)


def test_dry_run_plans_every_step_within_eight_minutes_and_writes_the_report(tmp_path):
    done = dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out/report.json").read_text())

    assert set(report) == {
        "version",
        "dry_run",
        "started",
        "finished",
        "machine",
        "install",
        "budget_s",
        "work",
        "steps",
        "summary",
    }
    assert report["version"] == 1 and report["dry_run"] is True
    assert report["started"] <= report["finished"]
    assert report["install"] == {"status": "skipped", "seconds": 0.0}
    assert report["machine"]["gpu"] is None
    assert report["work"] == str(tmp_path / "work")
    assert report["budget_s"] == sum(STEP_BUDGETS.values()) == 475 <= 480
    assert [step["name"] for step in report["steps"]] == list(STEP_BUDGETS)
    for step in report["steps"]:
        assert set(step) == STEP_KEYS
        assert step["budget_s"] == STEP_BUDGETS[step["name"]]
        # Placeholders filled, nothing run: no time, no log, no figures.
        assert "{python}" not in step["command"] and "{work}" not in step["command"]
        assert (step["seconds"], step["returncode"], step["log"], step["log_tail"], step["figures"]) == (
            0.0,
            None,
            None,
            [],
            {},
        )
        strategy = REPO / f"configs/strategies/{step['name']}.yaml"
        if step["name"] in STRATEGIES and not strategy.exists():
            reason = f"not in this checkout: configs/strategies/{step['name']}.yaml"
            assert (step["status"], step["reason"]) == ("missing", reason)
        else:
            assert (step["status"], step["reason"]) == ("planned", "dry run")
    assert report["steps"][0]["command"].startswith(f"{sys.executable} -m pytest -q -p no:cacheprovider -m cuda ")
    assert str(tmp_path / "work/fit_1b") in report["steps"][2]["command"]
    statuses = [step["status"] for step in report["steps"]]
    assert report["summary"] == {status: statuses.count(status) for status in report["summary"]}
    assert list(report["summary"]) == ["passed", "failed", "timeout", "skipped", "missing", "planned"]
    # One section per step in the combined log; no step ran, so no step log.
    log = (tmp_path / "out/gpu_check.log").read_text()
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("=====")] == [
        f"===== {name}" for name in STEP_BUDGETS
    ]
    assert not list((tmp_path / "work/logs").iterdir())


def test_steps_and_skip_select_and_the_budget_is_of_the_selected_steps(tmp_path):
    done = dry_run(tmp_path, "--steps", "fit_tiny,fit_1b,cuda_tests", "--skip", "cuda_tests")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out/report.json").read_text())
    statuses = {step["name"]: (step["status"], step["reason"]) for step in report["steps"]}
    assert statuses["fit_tiny"] == statuses["fit_1b"] == ("planned", "dry run")
    assert statuses["cuda_tests"] == statuses["benchmark_1b"] == ("skipped", "not selected")
    assert report["budget_s"] == 30 + 80


def test_an_unknown_step_is_refused_with_the_valid_names_before_anything_is_written(tmp_path):
    done = dry_run(tmp_path, "--steps", "fit_1b,fit_2b")
    assert done.returncode == 2
    assert f"unknown step fit_2b; the steps are {', '.join(STEP_BUDGETS)}" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_runner_passes_fails_and_times_out_a_step_and_reads_its_figures(tmp_path):
    check = load_script("gpu_check")
    env = {"PATH": "/usr/bin:/bin"}
    passing = check.Step(
        "p",
        10,
        'echo \'GPU_CHECK_FIGURES {"a": 1, "b": 2}\'; echo \'GPU_CHECK_FIGURES {"b": 3}\'; '
        "echo '3 passed, 1 skipped, 2 deselected in 2.00s'",
        "passes",
        parse=check.parse_pytest,
    )
    result = check.run_step(passing, passing.command, tmp_path / "p.log", env)
    assert (result.status, result.returncode, result.reason) == ("passed", 0, None)
    assert result.figures == {"passed": 3, "skipped": 1, "a": 1, "b": 3}
    assert result.log_tail[0] == f"$ {passing.command}" and result.log == str(tmp_path / "p.log")

    failing = check.Step("f", 10, "echo broken; exit 3", "fails")
    result = check.run_step(failing, failing.command, tmp_path / "f.log", env)
    assert (result.status, result.returncode, result.reason) == ("failed", 3, "exit status 3")
    assert result.log_tail[-1] == "broken" and result.figures == {}

    # The child of the step's shell is ended too: the step returns at its budget.
    hanging = check.Step("h", 1, "sleep 30 & wait", "hangs")
    result = check.run_step(hanging, hanging.command, tmp_path / "h.log", env)
    assert (result.status, result.returncode) == ("timeout", 124)
    assert result.reason == "still running after its budget of 1 s"
    assert result.seconds < 10


def test_a_real_run_records_each_outcome_and_fails_when_a_step_failed(tmp_path):
    check = load_script("gpu_check")
    # This machine has no GPU: the probe's answer is replaced, and the table by four small steps.
    check.machine = lambda: {"host": "h", "python": "3.12", "gpu": "Some GPU"}
    check.STEPS = (
        check.Step("ok", 10, "echo 'GPU_CHECK_FIGURES {{\"x\": 1}}'; echo {work}", "passes"),
        check.Step("bad", 10, "exit 4", "fails"),
        check.Step("needs", 10, "true", "lacks a module", requires_modules=("no_such_module",)),
        check.Step("absent", 10, "true", "lacks a file", requires_files=("no/such/file",)),
    )
    (tmp_path / "work/ok").mkdir(parents=True)
    (tmp_path / "work/ok/stale").write_text("from an earlier run")
    assert check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 1
    report = json.loads((tmp_path / "out/report.json").read_text())
    outcomes = {step["name"]: (step["status"], step["reason"], step["figures"]) for step in report["steps"]}
    assert outcomes == {
        "ok": ("passed", None, {"x": 1}),
        "bad": ("failed", "exit status 4", {}),
        "needs": ("skipped", "not installed: no_such_module", {}),
        "absent": ("missing", "not in this checkout: no/such/file", {}),
    }
    assert report["steps"][0]["log_tail"][-1] == str(tmp_path / "work")
    assert report["machine"]["gpu"] == "Some GPU" and report["finished"] is not None
    assert report["summary"] == {"passed": 1, "failed": 1, "timeout": 0, "skipped": 1, "missing": 1, "planned": 0}
    assert not (tmp_path / "work/ok").exists()  # a rerun starts the step's run folder afresh
    assert "===== bad: failed" in (tmp_path / "out/gpu_check.log").read_text()


def test_the_machine_probe_reads_the_device_and_the_package_versions_in_a_child_process():
    from importlib import metadata

    found = load_script("gpu_check").machine()
    assert set(found) == {"host", "python", "gpu", "gpu_memory_gib", "torch", "cuda", "packages"}
    assert found["torch"] == torch.__version__ and found["cuda"] == torch.version.cuda
    assert (found["gpu"] is None) == (not torch.cuda.is_available())
    assert list(found["packages"]) == list(load_script("gpu_check_tasks").PACKAGES)
    assert found["packages"]["pyarrow"] == metadata.version("pyarrow")
    packages = load_script("gpu_check_tasks").machine_info(["jsonargparse", "no-such-package"])["packages"]
    assert packages == {"jsonargparse": metadata.version("jsonargparse"), "no-such-package": None}


def test_the_1b_model_has_llama_3_2_1b_parameters_and_the_benchmark_recipe(tmp_path):
    tasks = load_script("gpu_check_tasks")
    fit = tasks.write_llama_1b(tmp_path / "llama-1b")
    config = AutoConfig.from_pretrained(tmp_path / "llama-1b")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400  # Llama-3.2-1B, tied embeddings
    tokenizer = (REPO / "assets/tiny-llama/tokenizer.json").read_bytes()
    assert (tmp_path / "llama-1b/tokenizer.json").read_bytes() == tokenizer

    written, recipe = yaml.safe_load(fit.read_text()), yaml.safe_load((REPO / "configs/benchmark.yaml").read_text())
    model_args = recipe["model"]["init_args"]
    del model_args["gguf_file"]
    model_args.update(model_name_or_path=str(tmp_path / "llama-1b"), random_init=True)
    recipe["trainer"]["default_root_dir"] = str(tmp_path / "llama-1b/runs")
    assert written == recipe
    assert tasks.write_llama_1b(tmp_path / "llama-1b").read_text() == fit.read_text()  # rewritten the same


def test_benchmark_figures_per_stack_and_ratios(tmp_path, capsys):
    tasks = load_script("gpu_check_tasks")
    stack = {"tokens_per_s": 1000.0, "supervised_tokens_per_s": 400.0, "peak_memory_bytes": 2**31, "val_loss": 2.5}
    peer = {"tokens_per_s": 800.0, "supervised_tokens_per_s": 320.0, "peak_memory_bytes": 2**32, "val_loss": 2.5}
    path = tmp_path / "benchmark.json"
    summary = {"results": {"lit_lora": stack, "peer": peer}, "table": "| table |", "predicted_peak_bytes": 3 * 2**30}
    path.write_text(json.dumps(summary))
    assert tasks.benchmark_figures(path) == {
        "lit_lora_tokens_per_s": 1000.0,
        "lit_lora_supervised_tokens_per_s": 400.0,
        "lit_lora_peak_memory_gib": 2.0,
        "lit_lora_val_loss": 2.5,
        "peer_tokens_per_s": 800.0,
        "peer_supervised_tokens_per_s": 320.0,
        "peer_peak_memory_gib": 4.0,
        "peer_val_loss": 2.5,
        "lit_lora_estimate_gib": 3.0,
        "tokens_per_s_ratio": 1.25,
        "peak_memory_ratio": 0.5,
    }
    assert capsys.readouterr().out == "| table |\n"


def test_check_adapter_wants_the_peft_files_and_finite_weights(tmp_path):
    tasks = load_script("gpu_check_tasks")
    with pytest.raises(SystemExit, match="lacks adapter_model.safetensors, adapter_config.json"):
        tasks.check_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4)}, tmp_path / "adapter_model.safetensors")
    figures = tasks.check_adapter(tmp_path)
    assert figures["adapter_tensors"] == 2
    save_file({"a": torch.tensor([1.0, float("nan")])}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(SystemExit, match=r"non-finite ones \(a\)"):
        tasks.check_adapter(tmp_path)
