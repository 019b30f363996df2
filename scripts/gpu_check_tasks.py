"""The pieces of scripts/gpu_check.py's steps that are Python rather than one command line.

    python scripts/gpu_check_tasks.py machine                      # GPU, torch, CUDA, package versions as JSON
    python scripts/gpu_check_tasks.py llama-1b DIR                 # a 1B-class random Llama folder + fit.yaml
    python scripts/gpu_check_tasks.py measured-fit --config ...    # fit, then peak memory against the estimate
    python scripts/gpu_check_tasks.py check-adapter DIR            # an exported adapter folder is complete
    python scripts/gpu_check_tasks.py benchmark-figures FILE.json  # scripts/benchmark.py's JSON as figures

Each but ``machine`` prints its figures on one ``GPU_CHECK_FIGURES {json}`` line, which
gpu_check.py collects into the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES_PREFIX = "GPU_CHECK_FIGURES "
GIB = 2**30
# The shape of Llama-3.2-1B (its config.json, less the weights): 1.24B parameters.
LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "vocab_size": 128256,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
}
# The committed tiny tokenizer: its ids are a subset of the 1B model's vocabulary, and
# random weights make any tokenizer as good as Llama's own for speed and memory.
TOKENIZER = REPO / "assets/tiny-llama"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Versions the report records: the image's own packages and the carried wheels (datasets
# 5.2 wants pyarrow >= 24, which the image must provide: its wheel alone would exceed the limit).
PACKAGES = (
    "transformers",
    "peft",
    "lightning",
    "bitsandbytes",
    "datasets",
    "pyarrow",
    "jsonargparse",
    "deepspeed",
    "flash-attn",
)


def print_figures(figures: dict[str, Any]) -> None:
    """Print ``figures`` on the line gpu_check.py reads them from."""
    print(FIGURES_PREFIX + json.dumps(figures), flush=True)


def machine_info(packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """The GPU (``None`` without CUDA), its memory, torch and CUDA versions, and ``packages``' versions.

    Args:
        packages: Distribution names; a missing one's version is ``None``.
    """
    from importlib import metadata

    import torch

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if gpu else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "packages": {name: version(name) for name in packages},
    }


def write_llama_1b(folder: Path, shape: dict[str, Any] | None = None) -> Path:
    """Write a model folder (config.json + the tiny tokenizer) and its fit config ``fit.yaml``.

    The fit config is ``configs/benchmark.yaml`` (the benchmark's QLoRA recipe: NF4, r 16,
    selective checkpointing, paged 8-bit AdamW, bf16, batch 8 of up to 256 tokens) with
    the model swapped for this folder's, with random weights. Rewritten on every call,
    the same each time, so fit_1b and benchmark_1b share lit_lora's cached weights.

    Args:
        folder: Where the folder goes.
        shape: The config.json content; Llama-3.2-1B's by default (tests pass a small one).

    Returns:
        The path of ``fit.yaml``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {**(shape or LLAMA_1B), "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": None}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER / name, folder / name)
    fit = yaml.safe_load((REPO / "configs/benchmark.yaml").read_text())
    fit["trainer"]["default_root_dir"] = str(folder / "runs")
    model = fit["model"]["init_args"]
    model.pop("gguf_file", None)
    model.update(model_name_or_path=str(folder), random_init=True)
    path = folder / "fit.yaml"
    path.write_text(yaml.safe_dump(fit, sort_keys=False))
    return path


def measured_fit(args: Sequence[str]) -> dict[str, Any]:
    """Run ``fit`` with ``args`` in this process on CUDA; peak memory against lit_lora's estimate.

    The estimate is of the device memory the run needs, CUDA context included;
    ``torch.cuda.max_memory_allocated`` counts the tensors alone, and
    ``max_memory_reserved`` the caching allocator's blocks, so a sound estimate lies
    above both by about the context (~0.5 GiB).

    Args:
        args: A ``fit`` command line without ``fit``.
    """
    import torch

    from lit_lora.cli import main
    from lit_lora.commands.estimate import predict_peak

    estimate = predict_peak(list(args))
    torch.cuda.reset_peak_memory_stats()
    cli = main(["fit", *args])
    metrics = cli.trainer.callback_metrics
    figures = {
        "steps": cli.trainer.global_step,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        "estimate_gib": round(estimate.total_bytes / GIB, 3),
        "batch_size": estimate.batch_size,
        "train_loss": float(metrics["train/loss"]) if "train/loss" in metrics else None,
    }
    figures["estimate_over_reserved"] = round(figures["estimate_gib"] / figures["peak_reserved_gib"], 3)
    return figures


def check_adapter(folder: Path) -> dict[str, Any]:
    """The exported adapter folder holds the PEFT files with finite weights.

    Raises:
        SystemExit: A file is missing or a weight is not finite.
    """
    import torch
    from safetensors.torch import load_file

    missing = [name for name in ("adapter_model.safetensors", "adapter_config.json") if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"check-adapter: {folder} lacks {', '.join(missing)}")
    weights = load_file(folder / "adapter_model.safetensors")
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if bad or not weights:
        raise SystemExit(f"check-adapter: {folder}: no weights or non-finite ones ({', '.join(bad[:3])})")
    size = (folder / "adapter_model.safetensors").stat().st_size
    return {"adapter_tensors": len(weights), "adapter_mib": round(size / 2**20, 2)}


def benchmark_figures(path: Path) -> dict[str, Any]:
    """The report's figures from scripts/benchmark.py's ``--json`` file: per stack and lit_lora/peer ratios."""
    summary = json.loads(path.read_text())
    figures: dict[str, Any] = {}
    for stack, results in summary["results"].items():
        figures[f"{stack}_tokens_per_s"] = round(results["tokens_per_s"], 1)
        figures[f"{stack}_supervised_tokens_per_s"] = round(results["supervised_tokens_per_s"], 1)
        figures[f"{stack}_peak_memory_gib"] = round(results["peak_memory_bytes"] / GIB, 3)
        figures[f"{stack}_val_loss"] = round(results["val_loss"], 4)
    if summary.get("predicted_peak_bytes") is not None:
        figures["lit_lora_estimate_gib"] = round(summary["predicted_peak_bytes"] / GIB, 3)
    if {"lit_lora", "peer"} <= summary["results"].keys():
        figures["tokens_per_s_ratio"] = round(figures["lit_lora_tokens_per_s"] / figures["peer_tokens_per_s"], 3)
        figures["peak_memory_ratio"] = round(figures["lit_lora_peak_memory_gib"] / figures["peer_peak_memory_gib"], 3)
    print(summary["table"])
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one task per call (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    tasks.add_parser("machine")
    tasks.add_parser("llama-1b").add_argument("folder", type=Path)
    tasks.add_parser("measured-fit", add_help=False)
    tasks.add_parser("check-adapter").add_argument("folder", type=Path)
    tasks.add_parser("benchmark-figures").add_argument("path", type=Path)
    args, rest = parser.parse_known_args(argv)
    if rest and args.task != "measured-fit":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.task == "machine":
        print(json.dumps(machine_info()))
    elif args.task == "llama-1b":
        print(f"llama-1b: {write_llama_1b(args.folder)}")
    elif args.task == "measured-fit":
        print_figures(measured_fit(rest))
    elif args.task == "check-adapter":
        print_figures(check_adapter(args.folder))
    else:
        print_figures(benchmark_figures(args.path))


if __name__ == "__main__":
    main(sys.argv[1:])
