"""The sharded base: exact against an unsharded model, on two real processes (gloo).

FSDP2 shards bitsandbytes' packed 4-bit weights as bytes and gathers them back before
each layer runs, where bitsandbytes reattaches their quantization state; bitsandbytes
issue #1945 reports wrong outputs from sharded 4-bit weights in bf16 storage. Here
every case must match the unsharded model exactly (difference 0, not a tolerance):
the loss the module trains on, the logits generation reads, and every adapter
gradient, for 4-bit weights stored in float32 and in uint8, an unquantized base, and
an output head tied to the embeddings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lit_lora.training.sharded_base import average_gradients, decoder_layers, trainable_parameters
from tests.helpers.tiny import REPO, TINY_MODEL


@pytest.fixture(scope="module")
def two_process_results() -> tuple[list[dict], list]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += [str(REPO / "tests" / "helpers" / "sharded_forward.py"), str(TINY_MODEL)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    results = [json.loads(line.removeprefix("RESULT ")) for line in lines if line.startswith("RESULT ")]
    averaged = next(json.loads(line.removeprefix("AVERAGED ")) for line in lines if line.startswith("AVERAGED "))
    return results, averaged


def test_a_sharded_forward_and_backward_equal_the_unsharded_ones_exactly(two_process_results):
    results, _ = two_process_results
    assert [(r["mode"], r["storage"], r["tied"]) for r in results] == [
        ("nf4", "float32", False),
        ("nf4", "uint8", False),
        ("none", "uint8", False),
        ("nf4", "float32", True),
    ]
    for result in results:
        assert (result["loss"], result["logits"], result["grads"]) == (0.0, 0.0, 0.0), result


def test_each_process_holds_about_half_of_the_frozen_base(two_process_results):
    results, _ = two_process_results
    for result in results:
        # Half of every weight, cut along dim 0 (a tied head, whole on both, not counted).
        assert 0.49 < result["held_share"] < 0.51, result


def test_gradients_are_averaged_over_processes_a_missing_one_as_zero(two_process_results):
    _, averaged = two_process_results
    assert averaged == [[1.5, 1.5, 1.5], [0.0, 0.0]]


def test_average_gradients_on_one_process_changes_nothing():
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.tensor([1.0, 2.0])
    average_gradients([parameter], world_size=1)
    assert parameter.grad.tolist() == [1.0, 2.0]


def test_decoder_layers_are_found_from_the_models_unsplittable_classes():
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL))
    layers = decoder_layers(model)
    assert [type(layer).__name__ for layer in layers] == ["LlamaDecoderLayer"] * model.config.num_hidden_layers
    assert layers == list(model.model.layers)
    model.requires_grad_(False)
    assert trainable_parameters(model) == []
