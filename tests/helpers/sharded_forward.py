"""Run under ``torchrun --nproc_per_node 2``: a sharded model against an unsharded copy, on gloo.

For each case (a base quantization and storage, a tied or untied output head), every
process builds the same adapted tiny model twice, shards one copy with
:func:`lit_lora.training.sharded_base.shard_frozen_base`, and runs both the way the
module's loss does (decoder, then the head at the supervised positions) and the way
generation does (the whole model). Rank 0 prints one JSON line per case: the largest
differences in loss, logits and adapter gradients (all exactly 0 when sharding is
exact), and the share of the base's frozen weights this process holds.

Also checks :func:`~lit_lora.training.sharded_base.average_gradients` on gradients that
differ by rank.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from lit_lora.model.loading import base_model_folder, load_base_model
from lit_lora.model.lora import LoRASettings, trainable_adapter
from lit_lora.model.loss import head_loss_sum
from lit_lora.model.quantization import QuantizationSettings
from lit_lora.training.sharded_base import average_gradients, shard_frozen_base, trainable_parameters

CASES = [
    ("nf4", "float32", False),
    ("nf4", "uint8", False),
    ("none", "uint8", False),
    ("nf4", "float32", True),
]


def build(folder: str, quantization: QuantizationSettings) -> torch.nn.Module:
    """The adapted model, with non-zero LoRA B so that adapter and base both shape the output."""
    torch.manual_seed(0)
    base = load_base_model(folder, quantization, torch.device("cpu"))
    lora = LoRASettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    return trainable_adapter(base, lora, "CAUSAL_LM", "tiny", quantization.quantized)


def frozen_elements(model: torch.nn.Module) -> tuple[int, int]:
    """(elements of sharded frozen weights this process holds, elements of those weights whole).

    A tied output head stays whole on every process and is left out of both counts.
    """
    held = whole = 0
    head = model.get_output_embeddings().weight
    for p in model.parameters():
        if p.requires_grad or p is head and not hasattr(p, "to_local"):
            continue
        local = p.to_local() if hasattr(p, "to_local") else p
        held, whole = held + local.numel(), whole + p.numel()
    return held, whole


def compare(folder: str, mode: str, storage: str, mesh) -> dict:
    quantization = QuantizationSettings(mode=mode, compute_dtype="float32", quant_storage=storage)
    reference, sharded = build(folder, quantization), build(folder, quantization)
    shard_frozen_base(SimpleNamespace(model=sharded), mesh)
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :5] = -100
    results = {}
    for name, model in (("reference", reference), ("sharded", sharded)):
        hidden = model.get_base_model().get_decoder()(input_ids=ids).last_hidden_state
        loss, _ = head_loss_sum(hidden, model.get_output_embeddings(), labels)
        loss.backward()
        logits = model(input_ids=ids).logits
        grads = [p.grad for p in trainable_parameters(model)]
        results[name] = (loss.detach(), logits.detach(), grads)
    (loss_a, logits_a, grads_a), (loss_b, logits_b, grads_b) = results["reference"], results["sharded"]
    held, whole = frozen_elements(sharded)
    return {
        "loss": (loss_a - loss_b).abs().item(),
        "logits": (logits_a - logits_b).abs().max().item(),
        "grads": max((a - b).abs().max().item() for a, b in zip(grads_a, grads_b)),
        "held_share": held / whole,
    }


def tied_folder(config_folder: Path, out: Path) -> str:
    """The tiny config with its output head tied to the input embeddings."""
    config = json.loads((config_folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    return str(out)


def main(config_folder: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        # The random bases are written before the process group exists: with one,
        # transformers saves on rank 0 only and the other rank would find no files.
        # Each rank writes its own copy of the cache entry, keyed by content: both agree.
        tied = tied_folder(Path(config_folder), Path(scratch) / "tied")
        folders = [base_model_folder(tied if is_tied else config_folder, None, True, 0) for _, _, is_tied in CASES]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    for (mode, storage, is_tied), folder in zip(CASES, folders):
        result = {"mode": mode, "storage": storage, "tied": is_tied, **compare(folder, mode, storage, mesh)}
        if rank == 0:
            print("RESULT " + json.dumps(result), flush=True)
    # Gradients that differ by rank (rank r holds r + 1) average to their mean; a
    # missing gradient counts as zero.
    parameters = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    parameters[0].grad = torch.full((3,), float(rank + 1))
    average_gradients(parameters, world)
    if rank == 0:
        print("AVERAGED " + json.dumps([p.grad.tolist() for p in parameters]), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
