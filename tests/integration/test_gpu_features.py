"""The features whose CPU tests cannot show their CUDA paths, on a CUDA device.

The CPU tests of the same features: tests/model/test_base.py and test_replay.py
(gradients, checkpointing), tests/integration/test_packing_fit.py (resume),
tests/commands/test_merge.py, tests/model/test_packing_loss.py. On CUDA, LoRA dropout
is PEFT's own (drawn from the CUDA generator, which checkpointing and resume must
restore), bitsandbytes runs its CUDA kernels, and the optimizer pages its state.
Skipped on machines without CUDA (CI has none); scripts/gpu_check.sh runs them.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_lora import LoRASettings, QuantizationSettings
from lit_lora.artifacts.adapter_dir import base_spec
from lit_lora.cli import main
from lit_lora.commands.merge import merge
from lit_lora.data.collate import SFTCollator
from lit_lora.data.packing import PackedCollator
from lit_lora.model.loading import load_base_model
from lit_lora.model.replay import ReplayLinear
from tests.helpers.modules import batch, build, lora_grads

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = "cuda"
NF4_BF16 = QuantizationSettings(mode="nf4", compute_dtype="bfloat16")
DROPOUT = LoRASettings(r=4, alpha=8, dropout=0.2, init_lora_weights=False)


def test_every_lora_matrix_gets_gradient_through_4bit_layers_with_checkpointing_on_cuda(tiny_model_dir):
    module = build(tiny_model_dir, CUDA, quantization=NF4_BF16, gradient_checkpointing=True)
    layer = module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.device.type == CUDA
    assert module.model.base_model.model.is_activation_checkpointing
    module.train()
    with torch.autocast(CUDA, dtype=torch.bfloat16):
        loss_sum, count = module.compute_loss(batch(0, 2, 16, [5, 9], module.model.config.vocab_size, CUDA))
    (loss_sum / count).backward()
    grads = lora_grads(module)
    assert len(grads) == 28  # 7 projections x (A, B) x 2 layers
    for name, grad in grads.items():
        assert grad.device.type == CUDA and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["nf4", "none"])
def test_selective_checkpointing_on_cuda_gets_the_gradients_of_no_checkpointing(tiny_model_dir, mode):
    quantization = QuantizationSettings(mode=mode, compute_dtype="float32")
    data = batch(0, 2, 16, [5, 9], 512, CUDA)
    grads, modules = [], []
    for checkpointing in ("selective", False):
        module = build(
            tiny_model_dir, CUDA, lora=DROPOUT, quantization=quantization, gradient_checkpointing=checkpointing
        )
        module.train()
        # The same CUDA generator state: PEFT's dropouts draw the same masks in both runs.
        torch.manual_seed(7)
        loss_sum, count = module.compute_loss(data)
        (loss_sum / count).backward()
        grads.append(lora_grads(module))
        modules.append(module)
    layer = modules[0].model.base_model.model.model.layers[0].mlp.down_proj.base_layer
    assert isinstance(layer, ReplayLinear)
    assert isinstance(layer, bnb.nn.Linear4bit if mode == "nf4" else torch.nn.Linear)
    # On CUDA only the 14 base layers replay; the dropouts are PEFT's, recomputed from the CUDA RNG.
    assert len(modules[0]._replays) == 14 and modules[1]._replays == []
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(len(queue) == 0 for queue in modules[0]._replays)  # every kept output was taken


def test_paged_8bit_adamw_pages_8bit_state_on_cuda_and_steps_as_the_unpaged_one():
    generator = torch.Generator(device=CUDA).manual_seed(0)
    start = torch.randn(512, 256, device=CUDA, generator=generator)  # over bitsandbytes' 1e5 paging threshold
    paged, plain = start.clone().requires_grad_(), start.clone().requires_grad_()
    optimizers = bnb.optim.PagedAdamW8bit([paged], lr=1e-3), bnb.optim.AdamW8bit([plain], lr=1e-3)
    for _ in range(3):
        grad = torch.randn(512, 256, device=CUDA, generator=generator)
        for param, optimizer in zip((paged, plain), optimizers):
            param.grad = grad.clone()
            optimizer.step()
    state = optimizers[0].state[paged]
    assert state["state1"].dtype == state["state2"].dtype == torch.uint8
    assert getattr(state["state1"], "is_paged", False)
    assert not getattr(optimizers[1].state[plain]["state1"], "is_paged", False)
    torch.cuda.synchronize()  # paged buffers are written asynchronously
    assert not torch.equal(paged.detach(), start)
    torch.testing.assert_close(paged.detach(), plain.detach(), rtol=0, atol=0)


def fit_on_gpu(root: Path, *extra: str):
    """configs/tiny.yaml on the GPU in float32, LoRA dropout on, a step checkpoint every 2 steps."""
    return main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--trainer.accelerator",
            "gpu",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_steps",
            "6",
            "--step_checkpoint.every_n_train_steps",
            "2",
            *extra,
        ]
    )


def test_resume_restores_the_cuda_rng_and_ends_like_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names repo-relative paths
    whole = fit_on_gpu(tmp_path / "whole")
    assert whole.trainer.global_step == 6
    middle = tmp_path / "whole" / "checkpoints" / "step4.ckpt"
    checkpoint = torch.load(middle, weights_only=False)
    assert len(checkpoint["rng_states"]["cuda"]) == torch.cuda.device_count()
    resumed = fit_on_gpu(tmp_path / "resumed", "--ckpt_path", str(middle))
    assert resumed.trainer.global_step == 6
    expected = {name: p for name, p in whole.model.named_parameters() if p.requires_grad}
    # Dropout 0.05 draws its masks from the CUDA generator: a resume that did not restore
    # it trains the last two steps with other masks (on CPU, where the same test runs
    # with the CPU generator, leaving the restore out fails it at the first LoRA matrix).
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_merged_model_on_cuda_gives_the_logits_of_base_plus_adapter(tiny_adapters, tmp_path):
    adapter = tiny_adapters[0]
    merge(str(adapter), str(tmp_path / "merged"), dtype="float32")
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0)).to(CUDA)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).to(CUDA).eval()
    base = load_base_model(
        base_spec([adapter], None, None).folder(),
        QuantizationSettings(mode="none", compute_dtype="float32"),
        torch.device(CUDA),
    )
    unmerged = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=tokens).logits, unmerged(input_ids=tokens).logits, rtol=1e-4, atol=1e-4
        )


# Examples of 9, 5, 12 and 7 tokens, the first few of each unsupervised.
EXAMPLES = [(9, 4), (5, 2), (12, 6), (7, 3)]


def examples() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length, prompt in EXAMPLES:
        ids = torch.randint(3, 512, (length,), generator=generator).tolist()
        labels = [-100] * prompt + ids[prompt:]
        rows.append({"input_ids": ids, "labels": labels, "num_supervised": sum(x != -100 for x in labels[1:])})
    return rows


def available_attention() -> list[str]:
    """sdpa, and flash_attention_2 where flash-attn is installed (it packs one row per batch)."""
    import importlib.util

    return ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


@pytest.mark.parametrize("attention", available_attention())
def test_packed_examples_on_cuda_do_not_see_each_other(tiny_model_dir, attention):
    dtype = torch.bfloat16 if attention == "flash_attention_2" else torch.float32
    module = build(
        tiny_model_dir,
        CUDA,
        quantization=QuantizationSettings(mode="none", compute_dtype=str(dtype).removeprefix("torch.")),
        lora=LoRASettings(r=4, init_lora_weights=False),
        gradient_checkpointing=False,
        attn_implementation=attention,
    ).eval()
    rows = examples()
    # One row of all four: flash attention isolates packed examples only in a single row.
    packed = {key: value.to(CUDA) for key, value in PackedCollator(1)([rows]).items()}
    unpacked = {key: value.to(CUDA) for key, value in SFTCollator(1)(rows).items()}
    with torch.no_grad():
        packed_sum, packed_count = module.compute_loss(packed)
        unpacked_sum, unpacked_count = module.compute_loss(unpacked)
    assert packed_count.item() == unpacked_count.item() == sum(row["num_supervised"] for row in rows)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(packed_sum, unpacked_sum, rtol=tolerance, atol=tolerance)
