"""lit_lora against transformers ``Trainer`` + PEFT + bitsandbytes, on the same model, data and recipe.

Each stack trains in a child process of its own, so that its peak memory and its
start-up are its own: lit_lora through its CLI with ``configs/benchmark.yaml`` (the
recipe, with no performance setting: what a user gets by default), and the peer
written the way the transformers/PEFT documentation shows it, with every number read
from the same YAML file so the two cannot drift apart. The peer runs twice: with
glibc's default heap, as its users get it, and with the heap settings ``python -m
lit_lora`` starts CPU training with (glibc's tunables and a bounded oneDNN primitive
cache), which separates what the framework gains from what the allocator gains. Both
stacks load the same dequantized copy of the GGUF model that lit_lora caches, train
on the same examples with the same label masks, save the adapter, and are then
validated by one shared function.

Times run from the launch of a stack's process: start-up (interpreter, imports,
tokenization, model load and quantization) to the first batch, the training loop,
and the rest to the saved adapter. ``--profiles`` trains on three tasks of different
length profiles that the script generates itself (``scripts/benchmark_profiles.py``)
instead of the config's data. The tables go to stdout and, by default, into
``docs/benchmarks.md``, replacing only the section of the device, precision and data
they ran in. Where the device multiplies in the config's bfloat16 slower than in
float32 (CPUs without AMX or AVX512-BF16), both stacks train in float32 instead
(``--precision``).

    python scripts/benchmark.py --profiles all   # the three generated tasks, every stack
    python scripts/benchmark.py                  # the quickstart data
    python scripts/benchmark.py --max_steps 3 --output none
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_profiles import PROFILES, write_profile  # noqa: E402  (scripts/ is no package)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/benchmark.yaml"
DEFAULT_OUTPUT = "docs/benchmarks.md"
# The peer twice: as its users run it (glibc's default heap), and with the heap settings
# `python -m lit_lora` starts CPU training with (lit_lora.training.heap and
# lit_lora.training.kernel_cache), which separates what the framework
# gains from what the allocator gains.
STACKS = ("lit_lora", "peer", "peer_heap")
STACK_LABELS = {"lit_lora": "lit_lora", "peer": "peer", "peer_heap": "peer, lit_lora's heap"}
IGNORE_INDEX = -100
# The line a child prints its measurements on, so the parent can tell it from logs.
RESULT_PREFIX = "BENCHMARK_RESULT "
# Above this line docs/benchmarks.md is hand-written and left alone.
RESULTS_MARKER = "<!-- Everything below is written by scripts/benchmark.py. -->"
SECTION_TITLES = {"cpu": "CPU", "cuda": "CUDA"}
# lit_lora optimizer classes and the TrainingArguments.optim names of the same optimizers.
OPTIMIZER_NAMES = {
    "bitsandbytes.optim.PagedAdamW8bit": "paged_adamw_8bit",
    "bitsandbytes.optim.AdamW8bit": "adamw_8bit",
    "bitsandbytes.optim.PagedAdamW": "paged_adamw_32bit",
    "torch.optim.AdamW": "adamw_torch",
}
# lit_lora scheduler kinds and the TrainingArguments.lr_scheduler_type names (both warm up linearly).
SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
}
# (key, label, format) of each table row, in order; ratios are lit_lora / peer.
ROWS = (
    ("whole_s", "whole process: launch to exported adapter (s)", "{:,.1f}"),
    ("startup_s", "start-up: launch to first batch (s)", "{:,.1f}"),
    ("imports_s", "of the start-up, interpreter and imports (s)", "{:,.1f}"),
    ("train_loop_s", "training loop (s)", "{:,.1f}"),
    ("after_loop_s", "after the loop: adapter export, teardown (s)", "{:,.1f}"),
    ("supervised_tokens_per_s", "supervised tokens/s over the loop", "{:,.1f}"),
    ("tokens_per_s", "tokens/s over the loop (non-pad)", "{:,.1f}"),
    ("mfu", "MFU", "{:.2%}"),
    ("peak_memory_mib", "peak memory (MiB)", "{:,.0f}"),
    ("steps", "optimizer steps", "{:,.0f}"),
    ("supervised_tokens", "supervised tokens trained", "{:,.0f}"),
    ("tokens", "tokens trained (non-pad)", "{:,.0f}"),
    ("train_loss", "final train loss", "{:.4f}"),
    ("val_loss", "validation loss", "{:.4f}"),
)


# ---------------------------------------------------------------- configuration
def load_config(path: str | Path) -> dict[str, Any]:
    """Read a lit_lora fit config as plain data (no lit_lora import, so the peer can use it).

    Args:
        path: The YAML file.
    """
    return yaml.safe_load(Path(path).read_text())


def init_args(config: dict[str, Any], section: str) -> dict[str, Any]:
    """The settings of ``model`` or ``data``, written with or without ``class_path``/``init_args``."""
    part = config.get(section) or {}
    return part.get("init_args", part)


def compute_dtype(config: dict[str, Any]) -> torch.dtype:
    """The dtype the run's matrix multiplications execute in, from ``trainer.precision``.

    Both stacks run the dequantized 4-bit matmuls under autocast, so the precision
    decides it: bf16 for ``bf16-mixed``, float16 for ``16-mixed``, else float32.
    """
    # Indexed, not defaulted: lit_lora's default depends on the hardware.
    precision = str(config["trainer"]["precision"])
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def model_folder(config: dict[str, Any]) -> str:
    """The Hugging Face folder both stacks load the base from, as lit_lora resolves it.

    lit_lora's cached conversion of a GGUF file, or its cached random weights for
    ``random_init`` (the same weights for the same config and seed). Building it here,
    in the parent, also keeps the one-off work out of both children's timings.
    """
    from lit_lora.model.loading import base_model_folder

    model = init_args(config, "model")
    return base_model_folder(
        model["model_name_or_path"], model.get("gguf_file"), model.get("random_init", False), model.get("seed", 0)
    )


def tokenizer_folder(config: dict[str, Any]) -> str:
    """The Hugging Face folder both stacks load the tokenizer from: the model's, or ``tokenizer_name_or_path``."""
    from lit_lora.artifacts.source import resolve_model_folder
    from lit_lora.artifacts.tokenizer import tokenizer_source

    model = init_args(config, "model")
    source = tokenizer_source(model["model_name_or_path"], model.get("gguf_file"), model.get("tokenizer_name_or_path"))
    return resolve_model_folder(*source)


def peer_tokenizer(folder: str) -> Any:
    """The tokenizer as a Trainer user loads it: EOS doubles as padding where it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------- data (peer)
def prepare_peer_examples(tokenizer: Any, path: str | Path, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenize a ``messages`` JSONL file the way a Trainer user does, masking prompts with -100.

    The prompt is the conversation up to the reply, rendered by the chat template
    with its generation prompt (so the template's default system prompt is there,
    as in lit_lora); the reply is the rest of the full rendering, its end-of-turn
    text included, so the model learns to stop. Prompt and reply are tokenized
    separately: tokenizing the joined text could merge a token across the boundary,
    which the model never sees when it generates from the prompt alone.

    Args:
        tokenizer: The model's tokenizer, with a chat template.
        path: A JSONL file whose rows hold ``messages`` ending with an assistant turn.
        max_length: Keep the first ``max_length`` tokens of each example.

    Returns:
        One ``{"input_ids", "attention_mask", "labels"}`` per row that keeps a
        supervised token after truncation (the others would train on nothing).
    """
    examples = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        input_ids = (prompt_ids + reply_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + reply_ids)[:max_length]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append(
                {
                    "input_ids": input_ids,
                    "attention_mask": [1] * len(input_ids),
                    "labels": labels,
                }
            )
    return examples


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into ``(B, T)`` tensors, labels -100 and attention 0 on the padding."""
    length = max(len(example["input_ids"]) for example in examples)
    batch = {
        "input_ids": torch.full((len(examples), length), pad_token_id),
        "attention_mask": torch.zeros((len(examples), length), dtype=torch.long),
        "labels": torch.full((len(examples), length), IGNORE_INDEX),
    }
    for row, example in enumerate(examples):
        size = len(example["input_ids"])
        batch["input_ids"][row, :size] = torch.tensor(example["input_ids"])
        batch["attention_mask"][row, :size] = 1
        batch["labels"][row, :size] = torch.tensor(example["labels"])
    return batch


# ---------------------------------------------------------------- shared measurements
@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    examples: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """Mean next-token cross-entropy over all supervised tokens (token-weighted, not per batch).

    Applied unchanged to both trained models, under the same autocast.

    Args:
        model: A causal LM (the trained PeftModel of either stack).
        examples: Tokenized examples with ``labels`` (-100 where not supervised).
        pad_token_id: The id padding is written with.
        batch_size: Examples per forward pass.
        device: Where the model lives.
        dtype: The autocast dtype; float32 runs without autocast.
    """
    import bitsandbytes as bnb

    # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer for inference at
    # its first no-grad forward, with a kernel of other numerics; lit_lora switches
    # that off and the peer does not. Off for both, so both are scored by one kernel.
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    was_training = model.training
    model.eval()
    loss_sum, count = torch.zeros((), dtype=torch.float64), 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(examples[start : start + batch_size], pad_token_id).items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        supervised = targets != IGNORE_INDEX
        # Float32 before the log-softmax: bf16 loses the small probabilities of a large vocabulary.
        scores = logits[:, :-1][supervised].float()
        loss_sum += torch.nn.functional.cross_entropy(scores, targets[supervised], reduction="sum").cpu().double()
        count += int(supervised.sum())
    model.train(was_training)
    return float(loss_sum / count)


class TrainingMeter:
    """What both stacks' callbacks record: tokens fed to training, per-step losses, loop time.

    Token counts stay on the device as tensors, so counting adds no synchronisation
    per step; the clock synchronises CUDA at start and end only.

    Args:
        device: The training device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.supervised_tokens = torch.zeros((), dtype=torch.long, device=device)
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.step_losses: list[torch.Tensor] = []
        self.start: float | None = None
        self.end: float | None = None
        # Wall-clock twins of start and end, comparable with the parent's launch time.
        self.start_unix: float | None = None
        self.end_unix: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def batch(self, labels: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Count a training batch; the first one starts the clock.

        Supervised tokens are the labels the loss counts: not -100, after position 0,
        which no earlier token predicts.
        """
        if self.start is None:
            self.start = self._now()
            self.start_unix = time.time()
        self.supervised_tokens += (labels[:, 1:] != IGNORE_INDEX).sum()
        self.tokens += attention_mask.sum()

    def step_loss(self, loss: torch.Tensor) -> None:
        """Record an optimizer step's mean token loss."""
        # A copy: the logged tensor may be reused for the next step's value.
        self.step_losses.append(loss.detach().float().clone())

    def stop(self) -> None:
        """Stop the clock at the end of training."""
        self.end = self._now()
        self.end_unix = time.time()

    def results(self, window: int) -> dict[str, Any]:
        """The measurements, with the train loss as the mean of the last ``window`` steps' losses."""
        last = self.step_losses[-window:]
        return {
            "train_loop_s": self.end - self.start,
            "first_batch_unix": self.start_unix,
            "loop_end_unix": self.end_unix,
            "steps": len(self.step_losses),
            "supervised_tokens": int(self.supervised_tokens),
            "tokens": int(self.tokens),
            "train_loss": float(torch.stack(last).mean()) if last else float("nan"),
        }


# ---------------------------------------------------------------- the lit_lora child
@functools.cache
def _lit_lora_meter_class() -> type:
    """The Lightning callback class of the lit_lora child, built once, on first use."""
    from lightning.pytorch import Callback, LightningModule, Trainer

    class LitLoraMeter(Callback):
        """Feeds a :class:`TrainingMeter` from Lightning's training hooks."""

        def __init__(self) -> None:
            self.meter: TrainingMeter | None = None

        def on_train_batch_start(
            self,
            trainer: Trainer,
            pl_module: LightningModule,
            batch: Any,
            batch_idx: int,
        ) -> None:
            if self.meter is None:
                self.meter = TrainingMeter(pl_module.device)
            self.meter.batch(batch["labels"], batch["attention_mask"])

        def on_train_batch_end(
            self,
            trainer: Trainer,
            pl_module: LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
        ) -> None:
            # train/loss is the step's mean token loss, logged at every optimizer step.
            if "train/loss" in trainer.callback_metrics:
                self.meter.step_loss(trainer.callback_metrics["train/loss"])

        def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            self.meter.stop()

    return LitLoraMeter


def __getattr__(name: str) -> type:
    """Module attributes built on demand: ``LitLoraMeter``, the lit_lora child's callback."""
    # The lit_lora child names its callback by class_path on the CLI; building the class
    # lazily keeps Lightning out of the peer's process (and out of its memory).
    if name == "LitLoraMeter":
        return _lit_lora_meter_class()
    raise AttributeError(name)


def lit_lora_args(config_path: str, root_dir: str, max_steps: int | None, device: str) -> list[str]:
    """The fit command line of the lit_lora child: the config plus run-local overrides only.

    Validation during training is off because both stacks are validated afterwards by
    :func:`validation_loss`, and the peer does not validate while it trains.
    """
    args = [
        "fit",
        "--config",
        config_path,
        "--trainer.default_root_dir",
        root_dir,
        "--trainer.accelerator",
        "gpu" if device == "cuda" else "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.callbacks+",
        f"{__name__}.LitLoraMeter",
    ]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps)]
    return args


def run_lit_lora(config_path: str, folder: str, max_steps: int | None, device: torch.device) -> dict[str, Any]:
    """Train with lit_lora's CLI and measure; runs in the child process.

    Args:
        config_path: The fit config.
        folder: The base model's folder (lit_lora resolves it from the config itself).
        max_steps: Stop after this many optimizer steps; ``None`` trains the epoch.
        device: The training device.
    """
    from lit_lora.cli import main

    imported = time.time()
    config = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="lit_lora_benchmark_") as root:
        # fit ends with the adapter exported to <root>/adapter (lit_lora's default).
        cli = main(lit_lora_args(config_path, root, max_steps, device.type))
        exported = time.time()
        meter_class = _lit_lora_meter_class()
        meter = next(cb for cb in cli.trainer.callbacks if isinstance(cb, meter_class)).meter
        results = meter.results(config["trainer"]["log_every_n_steps"])
        results.update(imported_unix=imported, exported_unix=exported)
        tokenizer = peer_tokenizer(tokenizer_folder(config))
        results["val_loss"] = validate(cli.model.model, tokenizer, config, device)
    return results


def validate(model: torch.nn.Module, tokenizer: Any, config: dict[str, Any], device: torch.device) -> float:
    """:func:`validation_loss` of a trained model on the config's validation file, as both stacks call it."""
    data = init_args(config, "data")
    examples = prepare_peer_examples(tokenizer, data["val_file"], data["max_length"])
    batch_size = data.get("eval_batch_size") or data["batch_size"]
    return validation_loss(
        model,
        examples,
        tokenizer.pad_token_id,
        batch_size,
        device,
        compute_dtype(config),
    )


# ---------------------------------------------------------------- the peer child
def peer_arguments(config: dict[str, Any], output_dir: str, max_steps: int | None, device: torch.device) -> Any:
    """``TrainingArguments`` with every number taken from the lit_lora config.

    Settings are indexed, never defaulted: a setting missing from the YAML would
    take lit_lora's default on one side and transformers' on the other.

    Args:
        config: The parsed fit config.
        output_dir: Where the Trainer may write (nothing is saved).
        max_steps: Stop after this many optimizer steps; ``None`` trains the epochs.
        device: The training device.
    """
    from transformers import TrainingArguments

    trainer, model, data = (
        config["trainer"],
        init_args(config, "model"),
        init_args(config, "data"),
    )
    optimizer, scheduler = model["optimizer"], model["scheduler"]
    if scheduler.get("min_lr_ratio", 0.0) != 0.0:
        raise ValueError("the peer's schedules decay to 0; set model.scheduler.min_lr_ratio: 0")
    # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio.
    warmup = scheduler["warmup_steps"] if "warmup_steps" in scheduler else scheduler["warmup_ratio"]
    precision = compute_dtype(config)
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=data["batch_size"],
        gradient_accumulation_steps=trainer["accumulate_grad_batches"],
        num_train_epochs=trainer["max_epochs"],
        max_steps=-1 if max_steps is None else max_steps,
        learning_rate=optimizer["init_args"]["lr"],
        weight_decay=optimizer["init_args"]["weight_decay"],
        lr_scheduler_type=SCHEDULER_NAMES[scheduler["kind"]],
        warmup_steps=warmup,
        optim=OPTIMIZER_NAMES[optimizer["class_path"]],
        bf16=precision == torch.bfloat16,
        fp16=precision == torch.float16,
        max_grad_norm=trainer["gradient_clip_val"],
        logging_steps=trainer["log_every_n_steps"],
        report_to="none",
        save_strategy="no",
        seed=config["seed_everything"],
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
    )


def peer_model(config: dict[str, Any], folder: str, device: torch.device) -> Any:
    """Load, quantize and wrap the base model as the QLoRA documentation does.

    Args:
        config: The parsed fit config (``model.quantization``, ``model.lora``), with
            4-bit quantization and an explicit ``compute_dtype``.
        folder: The model folder lit_lora loads too.
        device: Where the model goes.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lit_lora.training.memory import checkpointing_enabled

    model = init_args(config, "model")
    quantization, lora = model["quantization"], model["lora"]
    if quantization["mode"] not in ("nf4", "fp4"):
        raise ValueError(f"the peer runs QLoRA (nf4 or fp4), not quantization.mode {quantization['mode']}")
    dtype = getattr(torch, quantization["compute_dtype"])
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization["mode"],
        bnb_4bit_use_double_quant=quantization["double_quant"],
        bnb_4bit_compute_dtype=dtype,
    )
    base = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=bnb_config, dtype=dtype, device_map={"": device}
    )
    # PEFT's default (on) unless the config turns lit_lora's off: the peer has no selective or auto mode.
    base = prepare_model_for_kbit_training(
        base,
        use_gradient_checkpointing=checkpointing_enabled(model.get("gradient_checkpointing", True)),
    )
    lora_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora_config)


def run_peer(config_path: str, folder: str, max_steps: int | None, device: torch.device) -> dict[str, Any]:
    """Train with transformers ``Trainer`` + PEFT + bitsandbytes and measure; runs in the child process.

    Args:
        config_path: The lit_lora fit config the numbers come from.
        folder: The model folder lit_lora loads too.
        max_steps: Stop after this many optimizer steps; ``None`` trains the epochs.
        device: The training device.
    """
    import peft  # noqa: F401  (imported here so that the import time is counted as imports)
    from datasets import Dataset
    from transformers import (
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
    )

    imported = time.time()
    config = load_config(config_path)
    data = init_args(config, "data")
    tokenizer = peer_tokenizer(tokenizer_folder(config))
    train = Dataset.from_list(prepare_peer_examples(tokenizer, data["train_file"], data["max_length"]))
    model = peer_model(config, folder, device)
    meter = TrainingMeter(device)

    # The Trainer hands its callbacks no batch, so the batch (and the step's loss) is
    # read at the model's forward; gradient checkpointing recomputes only the layers.
    # One forward is one step while accumulate_grad_batches is 1, as in the benchmark.
    def count(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if module.training:
            meter.batch(kwargs["labels"], kwargs["attention_mask"])

    def record(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if module.training:
            meter.step_loss(output.loss)

    model.register_forward_pre_hook(count, with_kwargs=True)
    model.register_forward_hook(record, with_kwargs=True)

    class StopClock(TrainerCallback):
        """Stops the meter's clock when training ends."""

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.stop()

    with tempfile.TemporaryDirectory(prefix="peer_benchmark_") as output_dir:
        trainer = Trainer(
            model=model,
            args=peer_arguments(config, output_dir, max_steps, device),
            train_dataset=train,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
            callbacks=[StopClock()],
        )
        trainer.train()
        # What a Trainer user keeps of a LoRA run: the adapter.
        model.save_pretrained(os.path.join(output_dir, "adapter"))
        exported = time.time()
    results = meter.results(trainer.args.logging_steps)
    results.update(imported_unix=imported, exported_unix=exported)
    results["val_loss"] = validate(model, tokenizer, config, device)
    return results


def child_main(
    stack: str,
    config_path: str,
    folder: str,
    max_steps: int | None,
    device: torch.device,
) -> None:
    """Run one stack and print its measurements as one JSON line (:data:`RESULT_PREFIX`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = run_lit_lora if stack == "lit_lora" else run_peer  # peer_heap: the peer, another heap
    results = run(config_path, folder, max_steps, device)
    if device.type == "cuda":
        results["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    print(RESULT_PREFIX + json.dumps(results), flush=True)


# ---------------------------------------------------------------- the parent
def run_child(stack: str, args: argparse.Namespace, folder: str, config_path: str) -> dict[str, Any]:
    """Run one stack in a fresh process and return its measurements plus wall time and peak RSS.

    ``os.wait4`` returns the resource usage of that one child, so its peak RSS is not
    mixed with the other stack's (``RUSAGE_CHILDREN`` holds the maximum over all children).
    """
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--stack",
        stack,
        "--config",
        config_path,
    ]
    command += ["--device", args.device, "--model_folder", folder]
    if args.max_steps is not None:
        command += ["--max_steps", str(args.max_steps)]
    # lit_lora's process starts with the glibc heap settings `python -m lit_lora` sets
    # for itself on a CPU run, and the bound on oneDNN's primitive cache it sets on any;
    # the peer's with the environment as it is, peer_heap's with lit_lora's settings.
    from lit_lora.training.heap import tuned_environ
    from lit_lora.training.kernel_cache import bound_primitive_cache

    environ = dict(os.environ)
    if stack == "peer_heap" or (stack == "lit_lora" and args.device == "cpu"):
        environ = tuned_environ(environ)
    if stack != "peer":
        bound_primitive_cache(environ)
    print(f"=== {stack}: {' '.join(command)}", flush=True)
    launched = time.time()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=environ)
    results = None
    for line in process.stdout:
        if line.startswith(RESULT_PREFIX):
            results = json.loads(line[len(RESULT_PREFIX) :])
        else:
            sys.stdout.write(line)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or results is None:
        raise SystemExit(f"benchmark: the {stack} run failed (exit status {process.returncode})")
    results["wall_s"] = wall
    # The child's clock readings, from the moment it was launched.
    results["imports_s"] = results.pop("imported_unix") - launched
    results["startup_s"] = results.pop("first_batch_unix") - launched
    results["after_loop_s"] = results["exported_unix"] - results.pop("loop_end_unix")
    results["whole_s"] = results.pop("exported_unix") - launched
    if "peak_memory_bytes" not in results:
        results["peak_memory_bytes"] = usage.ru_maxrss * 1024  # kilobytes on Linux
    return results


def model_flops_parameters(folder: str) -> int:
    """N of the FLOPs convention: non-embedding parameters plus the output head.

    The head is counted even when tied to the input embeddings: its matmul runs on
    every token either way. Built on the meta device, so nothing is allocated.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    # remove_duplicate=False lists a tied head under its own name too; the input
    # embeddings are then the one tensor to leave out.
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    return every - model.get_input_embeddings().weight.numel()


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of a square ``torch.mm`` in ``dtype`` on ``device``, repeated for about ``seconds``.

    The size doubles from 512 up to 4096 while one product takes under 50 ms: large
    enough to reach the peak where the dtype runs on matrix units, small enough not to
    take minutes where it is emulated (bfloat16 on a CPU without AVX512-BF16 or AMX
    runs at ~1 GFLOP/s, a hundredth of float32).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    size = 512
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(a, b)  # warm-up: kernel selection, thread pool
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        if size >= 4096 or time.perf_counter() - start > 0.05:
            break
        size *= 2
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
        if runs % 8 == 0:
            sync()
    sync()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def float32_config(config: dict[str, Any], directory: str) -> str:
    """Write ``config`` with float32 matmuls (``32-true``, ``compute_dtype: float32``) and return its path.

    For devices that multiply in the config's half precision slower than in float32:
    both stacks then train in float32, as lit_lora itself would choose there.
    """
    config = json.loads(json.dumps(config))  # a deep copy of plain YAML data
    config["trainer"]["precision"] = "32-true"
    init_args(config, "model")["quantization"]["compute_dtype"] = "float32"
    path = Path(directory) / "benchmark_float32.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def predicted_peak(config_path: str, max_steps: int | None) -> int | None:
    """lit_lora's own estimate of its peak memory for this run, or ``None`` when it has none."""
    try:
        from lit_lora.commands.estimate import predict_peak
    except ImportError:
        return None
    args = ["--config", config_path] + ([] if max_steps is None else ["--trainer.max_steps", str(max_steps)])
    return int(predict_peak(args).total_bytes)


def derive(results: dict[str, Any], flops_per_token: float, peak_flops: float) -> None:
    """Add rates, MFU and memory in MiB to one stack's measurements."""
    loop = results["train_loop_s"]
    results["supervised_tokens_per_s"] = results["supervised_tokens"] / loop
    results["tokens_per_s"] = results["tokens"] / loop
    results["mfu"] = flops_per_token * results["tokens_per_s"] / peak_flops
    results["peak_memory_mib"] = results["peak_memory_bytes"] / 2**20


def format_table(results: dict[str, dict[str, Any]], mfu_formula: str) -> str:
    """A Markdown table, one row per metric: a column per stack that ran, then lit_lora / each peer."""
    stacks = [stack for stack in STACKS if stack in results]
    peers = [stack for stack in stacks if stack != "lit_lora" and "lit_lora" in results]
    header = [STACK_LABELS[stack] for stack in stacks] + [f"lit_lora / {STACK_LABELS[peer]}" for peer in peers]
    lines = ["| metric | " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(header)]
    for key, label, fmt in ROWS:
        cells = [fmt.format(results[stack][key]) for stack in stacks]
        cells += [ratio(results["lit_lora"][key], results[peer][key]) for peer in peers]
        name = f"{label} = {mfu_formula}" if key == "mfu" else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` to two decimals, or empty where the denominator is 0."""
    return f"{numerator / denominator:.2f}" if denominator else ""


def format_summary(runs: dict[str, dict[str, Any]]) -> str:
    """The headline of a ``--profiles`` run: per profile, how many times faster lit_lora ran than each peer.

    Speed-ups are the peer's time over lit_lora's (above 1: lit_lora is faster);
    memory and validation loss are lit_lora's over the peer's (below 1: lit_lora's is lower).
    """
    lines = [
        "| profile | examples, tokens | whole process, x faster than peer (peer with lit_lora's heap) "
        "| training loop, x faster | start-up s, lit_lora / peer | peak RSS, lit_lora / peer "
        "| validation loss, lit_lora / peer |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        results = run["results"]
        ours, peer = results.get("lit_lora"), results.get("peer")
        if ours is None or peer is None:
            continue
        heap = results.get("peer_heap")
        whole = f"{peer['whole_s'] / ours['whole_s']:.2f}x" + (
            f" ({heap['whole_s'] / ours['whole_s']:.2f}x)" if heap else ""
        )
        lines.append(
            f"| {name} | {run['examples']:,}, {ours['tokens']:,} | {whole} "
            f"| {peer['train_loop_s'] / ours['train_loop_s']:.2f}x "
            f"| {ours['startup_s']:.1f} / {peer['startup_s']:.1f} "
            f"| {ours['peak_memory_mib']:,.0f} / {peer['peak_memory_mib']:,.0f} MiB "
            f"({ours['peak_memory_mib'] / peer['peak_memory_mib']:.2f}) "
            f"| {ours['val_loss']:.4f} / {peer['val_loss']:.4f} |"
        )
    return "\n".join(lines)


def machine_description(device: torch.device, peaks: dict[str, float]) -> str:
    """CPU, cores, RAM, GPU, library versions, date and the measured matmul peaks, as Markdown."""
    import bitsandbytes
    import lightning
    import peft
    import psutil
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    lines = [
        (
            f"- CPU: {match.group(1) if match else platform.processor()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
        ),
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    lines += [
        (
            f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
            f"bitsandbytes {bitsandbytes.__version__}, lightning {lightning.__version__}, "
            f"Python {platform.python_version()}"
        ),
        # GFLOP/s: an emulated bf16 peak (about 1 GFLOP/s) would print as 0.00 TFLOP/s.
        "- measured peak: " + ", ".join(f"{name} {flops / 1e9:,.0f} GFLOP/s" for name, flops in peaks.items()),
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
    ]
    return "\n".join(lines)


def write_section(path: Path, device_type: str, dtype_name: str, body: str, title: str = "") -> None:
    """Replace the section of ``device_type``, ``dtype_name`` and ``title`` in ``path`` (create it if missing).

    Sections are delimited by HTML comments, so a CPU run never touches a CUDA
    result, nor a float32 run a bfloat16 one, nor a ``--profiles`` run (``title``
    ", length profiles") the quickstart-data one; everything above
    :data:`RESULTS_MARKER` is hand-written and kept.
    """
    key = f"{device_type}-{dtype_name}" + ("-profiles" if title else "")
    begin, end = f"<!-- benchmark:{key}:begin -->", f"<!-- benchmark:{key}:end -->"
    section = f"{begin}\n## {SECTION_TITLES[device_type]}, {dtype_name}{title}\n\n{body}\n{end}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{RESULTS_MARKER}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def profile_config(config: dict[str, Any], profile: Any, directory: str) -> str:
    """Write ``profile``'s data and a copy of ``config`` that trains on it; return the config's path.

    Only the data files and ``data.max_length`` change: the recipe, and the absence of
    any performance setting, stay as the config has them.
    """
    config = json.loads(json.dumps(config))  # a deep copy of plain YAML data
    data = init_args(config, "data")
    data.update(write_profile(profile, Path(directory) / profile.name))
    data["max_length"] = profile.max_length
    path = Path(directory) / f"benchmark_{profile.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def run_stacks(args: argparse.Namespace, config_path: str, folder: str, flops_per_token: float, peak: float) -> dict:
    """Run every stack of ``args.stacks`` on one config; return their measurements and lit_lora's estimate."""
    results = {}
    for stack in args.stacks:
        results[stack] = run_child(stack, args, folder, config_path)
        derive(results[stack], flops_per_token, peak)
    data = init_args(load_config(config_path), "data")
    examples = sum(1 for line in Path(data["train_file"]).read_text().splitlines() if line.strip())
    return {
        "results": results,
        "predicted_peak_bytes": predicted_peak(config_path, args.max_steps),
        "examples": examples,
    }


def memory_line(run: dict[str, Any]) -> str:
    """lit_lora's predicted peak memory against the measured one."""
    predicted, measured = run["predicted_peak_bytes"], run["results"].get("lit_lora", {}).get("peak_memory_bytes")
    if predicted is None:
        return "lit_lora peak memory: estimate unavailable"
    if measured is None:
        return f"lit_lora peak memory: predicted {predicted / 2**20:,.0f} MiB (lit_lora not run)"
    return (
        f"lit_lora peak memory: predicted {predicted / 2**20:,.0f} MiB, measured {measured / 2**20:,.0f} MiB "
        f"(predicted / measured {predicted / measured:.2f})"
    )


def parent_main(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run the stacks, print the tables and write them where ``--output`` says.

    Returns:
        Without ``--profiles``: ``{"results": {stack: metrics}, "table": markdown,
        "predicted_peak_bytes": int | None}``. With it: ``{"profiles": {name: that
        same dict}, "summary": markdown}``.
    """
    config = load_config(args.config)
    folder = model_folder(config)
    device = training_device(args.device)
    peaks = {str(d).removeprefix("torch."): measure_peak_flops(device, d) for d in (torch.bfloat16, torch.float32)}
    dtype = compute_dtype(config)
    dtype_name = str(dtype).removeprefix("torch.")
    workdir = tempfile.TemporaryDirectory(prefix="lit_lora_benchmark_config_")
    if args.precision == "auto" and peaks.get(dtype_name, math.inf) < peaks["float32"]:
        print(
            f"benchmark: this {device.type} multiplies in {dtype_name} at {peaks[dtype_name] / 1e9:,.1f} GFLOP/s "
            f"against {peaks['float32'] / 1e9:,.1f} in float32, so both stacks train in float32 "
            "(--precision config keeps the config's)",
            flush=True,
        )
        args.config = float32_config(config, workdir.name)
        config, dtype, dtype_name = load_config(args.config), torch.float32, "float32"
    peak = peaks[dtype_name]
    n = model_flops_parameters(folder)
    # A frozen base gets no weight gradients: forward 2N + input gradients 2N per token.
    flops_per_token = 4 * n
    mfu_formula = f"4·N·tokens/s ÷ {dtype_name} mm peak, N = {n / 1e6:.1f}M"
    notes = (
        "Peak memory: "
        + ("`torch.cuda.max_memory_allocated`" if device.type == "cuda" else "peak RSS of the stack's process")
        + ". Times are wall-clock from the launch of the stack's process; the whole process ends when the "
        "adapter is saved (both stacks are validated after that, by one shared function, outside these "
        "times). Final train loss: mean of the per-step losses over the last logging window "
        "(`trainer.log_every_n_steps` steps). Validation loss: token-weighted over all supervised tokens of "
        "the validation file. Tokens/s over the training loop (first batch to end of training). N: "
        "non-embedding parameters plus the output head; attention and LoRA FLOPs are not counted, nor "
        "recomputation by gradient checkpointing."
    )
    command = " ".join(["python", "scripts/benchmark.py", *argv])
    header = f"{machine_description(device, peaks)}\n\nCommand: `{command}`\n\n"

    if not args.profiles:
        run = run_stacks(args, args.config, folder, flops_per_token, peak)
        run["table"] = format_table(run["results"], mfu_formula)
        text = f"{run['table']}\n\n{memory_line(run)}\n\n{notes}\n"
        summary, title = run, ""
    else:
        runs = {}
        for name in args.profiles:
            print(f"=== profile {name}: {PROFILES[name].description}", flush=True)
            run = run_stacks(args, profile_config(config, PROFILES[name], workdir.name), folder, flops_per_token, peak)
            run["table"] = format_table(run["results"], mfu_formula)
            runs[name] = run
        text = (
            format_summary(runs)
            + "\n\n"
            + "".join(
                f"### {name}: {PROFILES[name].description}\n\n{run['table']}\n\n{memory_line(run)}\n\n"
                for name, run in runs.items()
            )
            + f"{notes}\n"
        )
        summary, title = {"profiles": runs, "summary": format_summary(runs)}, ", length profiles"
    print(f"\n{text}")
    if args.output is not None:
        write_section(Path(args.output), device.type, dtype_name, header + text, title)
        print(f"benchmark: wrote the {SECTION_TITLES[device.type]}, {dtype_name}{title} section of {args.output}")
    workdir.cleanup()
    if args.json is not None:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


def training_device(name: str) -> torch.device:
    """The device both stacks use: the first GPU (Lightning's ``devices: 1``) or the CPU."""
    return torch.device("cuda", 0) if name == "cuda" else torch.device("cpu")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the benchmark (and of its child processes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="optimizer steps per stack (default: the config's full epochs)",
    )
    parser.add_argument(
        "--stacks",
        nargs="+",
        choices=STACKS,
        default=list(STACKS),
        help="which stacks to run: lit_lora, the peer as its users run it, and the peer with lit_lora's glibc "
        "heap settings (default: all three)",
    )
    parser.add_argument(
        "--profiles",
        nargs="+",
        choices=[*PROFILES, "all"],
        default=None,
        help="train on tasks this script generates instead of the config's data, one run of every stack per "
        "profile: "
        + "; ".join(f"{name}: {profile.description}" for name, profile in PROFILES.items())
        + " (scripts/benchmark_profiles.py); 'all' for the three (default: the config's data)",
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        type=lambda value: None if value == "none" else value,
        help=f"Markdown file whose section for this device gets the results, or 'none' (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device both stacks train on (default: cuda when available)",
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"lit_lora fit config both stacks take their settings from (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "config"),
        default="auto",
        help="auto: the config's trainer.precision, unless this device multiplies in its half precision "
        "slower than in float32 (bfloat16 on most CPUs without AMX): then both stacks train in float32; "
        "config: always the config's (default: auto)",
    )
    parser.add_argument("--json", default=None, help="also write all measurements to this JSON file")
    # Set by the parent on its child processes only.
    parser.add_argument("--stack", choices=STACKS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model_folder", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Entry point: the parent without ``--stack``, a child with it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.profiles is not None and "all" in args.profiles:
        args.profiles = list(PROFILES)
    # The config's paths (model folder, data files) are relative to the repository.
    os.chdir(REPO)
    if args.stack is not None:
        child_main(
            args.stack,
            args.config,
            args.model_folder,
            args.max_steps,
            training_device(args.device),
        )
        return None
    return parent_main(args, argv)


if __name__ == "__main__":
    main()
