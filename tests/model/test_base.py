"""The LoRAModule on a tiny random Llama: gradients, loss normalisation, checkpoints."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import has_avx512bf16
from lightning.pytorch import Trainer
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from lit_lora import LoRAModule, LoRASettings, QuantizationSettings
from lit_lora.errors import ConfigError
from lit_lora.model.loss import probe_separable_head, token_loss_sum
from lit_lora.training.optim import LRSchedule
from tests.helpers.modules import batch, build, lora_grads


def test_every_lora_matrix_gets_gradient_on_4bit_base_with_checkpointing(tiny_model_dir):
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4"), gradient_checkpointing=True)
    layer = module.model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert module.model.base_model.model.is_activation_checkpointing
    assert module.model.training
    module.train()
    vocab = module.model.config.vocab_size
    loss_sum, count = module.compute_loss(batch(0, 2, 16, [5, 9], vocab))
    (loss_sum / count).backward()
    grads = lora_grads(module)
    # all-linear on 2 layers: 7 projections x (A, B) x 2 layers
    assert len(grads) == 28
    assert all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights only on AVX512-BF16 CPUs")
def test_evaluation_leaves_4bit_training_numerics_unchanged(tiny_model_dir):
    # bitsandbytes repacks 4-bit CPU weights on the first no-grad eval forward, unless
    # told not to; training after validation must give the same gradients as before.
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4"))
    data = batch(0, 2, 16, [5, 9], module.model.config.vocab_size)

    def step() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        module.zero_grad()
        module.train()
        loss_sum, count = module.compute_loss(data)
        (loss_sum / count).backward()
        return lora_grads(module), loss_sum.detach()

    grads_before, loss_before = step()
    module.eval()
    with torch.no_grad():
        eval_loss, _ = module.compute_loss(data)
    grads_after, loss_after = step()
    assert eval_loss == loss_before == loss_after
    for name, grad in grads_before.items():
        torch.testing.assert_close(grads_after[name], grad, rtol=0, atol=0)


def test_default_init_trains_b_first_then_a(tiny_model_dir):
    # B starts at zero, so A's first gradient is exactly zero; after one step both learn.
    module = build(
        tiny_model_dir,
        quantization=QuantizationSettings(mode="nf4"),
        lora=LoRASettings(r=4, alpha=8, dropout=0.0),
    )
    module.train()
    params = dict((n, p) for n, p in module.named_parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(params.values(), lr=1.0)
    data = batch(0, 2, 16, [5, 9], module.model.config.vocab_size)
    for step in range(2):
        optimizer.zero_grad()
        loss_sum, count = module.compute_loss(data)
        (loss_sum / count).backward()
        for name, p in params.items():
            nonzero = bool(p.grad.abs().sum() > 0)
            assert nonzero == ("lora_B" in name or step == 1), (step, name)
        optimizer.step()


class Recording(LoRAModule):
    """Keeps the normalised gradients of the first optimizer step."""

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.recorded = lora_grads(self)


def test_loss_is_mean_over_supervised_tokens_of_the_optimizer_step(tiny_model_dir):
    vocab = 512
    # Two micro-batches with very different numbers of supervised tokens (3 and 20).
    micro = [batch(1, 1, 24, [3], vocab), batch(2, 2, 24, [10, 10], vocab)]
    module = build(tiny_model_dir, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    module.__class__ = Recording
    trainer = Trainer(
        max_steps=1,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(micro, batch_size=None))

    reference = build(tiny_model_dir)
    reference.train()
    # The attention kernel fit picks for these rows (lit_lora.model.attention).
    reference.attention.select(24)
    sums, counts = zip(*(reference.compute_loss(b) for b in micro))
    (sum(sums) / sum(counts)).backward()
    expected = lora_grads(reference)
    for name, grad in module.recorded.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-7)

    # The per-micro-batch average that gradient accumulation usually computes differs.
    naive = build(tiny_model_dir)
    naive.train()
    for b in micro:
        s, c = naive.compute_loss(b)
        (s / c / 2).backward()
    name = next(iter(expected))
    assert not torch.allclose(lora_grads(naive)[name], expected[name], rtol=1e-2)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx((sum(sums) / sum(counts)).item(), rel=1e-5)


def quiet_trainer(**kwargs) -> Trainer:
    return Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs
    )


def test_embeddings_trained_in_full_get_their_own_learning_rate_and_are_exported(tiny_model_dir, tmp_path):
    module = build(
        tiny_model_dir,
        lora=LoRASettings(r=4, alpha=8, modules_to_save=["lm_head"]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01),
        embedding_lr_ratio=0.25,
        scheduler=LRSchedule(kind="constant", warmup_steps=0),
    )
    data = [batch(0, 2, 16, [5, 9], module.model.config.vocab_size)]
    trainer = quiet_trainer(max_steps=1, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    groups = trainer.optimizers[0].param_groups
    head = {id(p) for n, p in module.named_parameters() if "lm_head.modules_to_save" in n}
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2.5e-4])
    assert {id(p) for p in groups[1]["params"]} == head
    exported = load_file(module.save_adapter(tmp_path) / "adapter_model.safetensors")
    assert "base_model.model.lm_head.weight" in exported


def test_checkpoint_of_a_python_api_run_loads_with_load_from_checkpoint(tiny_model_dir, tmp_path):
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4"))
    data = [batch(0, 2, 16, [5, 9], module.model.config.vocab_size)]
    trainer = quiet_trainer(max_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    path = tmp_path / "step1.ckpt"
    trainer.save_checkpoint(path)
    loaded = LoRAModule.load_from_checkpoint(path)  # torch.load's default weights-only unpickler
    assert loaded.lora == module.lora and loaded.quantization == module.quantization
    for name, param in module.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(loaded.state_dict()[name], param.detach(), rtol=0, atol=0)


def test_checkpoint_holds_only_the_adapter_and_loads_into_a_fresh_module(tiny_model_dir, tmp_path):
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4"))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {n for n, p in module.named_parameters() if p.requires_grad}
    torch.save(checkpoint, tmp_path / "c.ckpt")

    fresh = LoRAModule(
        str(tiny_model_dir), random_init=True, quantization=QuantizationSettings(mode="nf4"), lora=module.lora
    )
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    for name, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)

    other = LoRAModule(str(tiny_model_dir), random_init=True, lora=LoRASettings(r=8))
    with pytest.raises(ConfigError, match="does not match model.lora"):
        other.on_load_checkpoint(checkpoint)


def test_missing_model_path_is_a_config_error(tmp_path):
    with pytest.raises(
        ConfigError, match="model.model_name_or_path: '.*nope' is a local path, and .*nope does not exist"
    ):
        LoRAModule(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="gguf_file: 'x.gguf' is not in"):
        LoRAModule(str(tmp_path), gguf_file="x.gguf")


def sgd_without_steps(params):
    """Module-level so that ddp_spawn can pickle it; lr 0 keeps the weights fixed."""
    return torch.optim.SGD(params, lr=0.0)


class SavingGrads(LoRAModule):
    """Rank 0 writes its starting adapter and its normalised first-step gradients."""

    def on_train_start(self):
        super().on_train_start()
        if self.global_rank == 0:  # after DDP's broadcast: every rank holds these
            torch.save(
                {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}, self.out / "init.pt"
            )

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        if self.global_rank == 0:
            torch.save(lora_grads(self), self.out / "grads.pt")


def test_loss_is_normalised_over_the_supervised_tokens_of_all_devices(tiny_model_dir, tmp_path):
    # Two processes, one micro-batch each, with 3 and 20 supervised tokens: the step's
    # gradient must be that of the mean over all 23 tokens, as on one device.
    micro = [batch(1, 1, 24, [3], 512), batch(2, 2, 24, [10, 10], 512)]
    settings = dict(
        random_init=True,
        quantization=QuantizationSettings(mode="none"),
        gradient_checkpointing=False,
        lora=LoRASettings(r=4, alpha=8, dropout=0.0, init_lora_weights=False),
    )
    module = SavingGrads(str(tiny_model_dir), optimizer=sgd_without_steps, **settings)
    module.out = tmp_path
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=1,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader(micro, batch_size=None))
    recorded = torch.load(tmp_path / "grads.pt")

    reference = LoRAModule(str(tiny_model_dir), **settings)
    reference.configure_model()
    reference.load_state_dict(torch.load(tmp_path / "init.pt"), strict=False)
    reference.train()
    sums, counts = zip(*(reference.compute_loss(b) for b in micro))
    (sum(sums) / sum(counts)).backward()
    expected = lora_grads(reference)
    assert set(recorded) == set(expected)
    for name, grad in recorded.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6)  # all-reduce order: float32 rounding


def test_the_loss_scores_only_supervised_positions_and_equals_the_full_logits_loss(tiny_model_dir):
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4"))
    module.train()
    data = batch(3, 2, 16, [5, 9], module.model.config.vocab_size)
    loss_sum, count = module.compute_loss(data)
    assert module._separable_head
    (loss_sum / count).backward()
    grads = lora_grads(module)
    module.zero_grad()
    full_sum, full_count = token_loss_sum(module(data["input_ids"], data["attention_mask"]), data["labels"])
    (full_sum / full_count).backward()
    assert count == full_count == 14
    torch.testing.assert_close(loss_sum, full_sum, rtol=1e-5, atol=1e-5)
    for name, grad in lora_grads(module).items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)


def test_a_model_that_scales_its_logits_falls_back_to_the_full_head(tiny_model_dir):
    module = build(tiny_model_dir)
    assert probe_separable_head(module.model, module.hidden_states)
    base = module.model.get_base_model()
    original = base.forward
    base.forward = lambda *args, **kwargs: type(original(*args, **kwargs))(logits=2 * original(*args, **kwargs).logits)
    assert not probe_separable_head(module.model, module.hidden_states)


def test_under_autocast_adapted_layers_take_bfloat16_inputs_and_the_loss_is_unchanged(tiny_model_dir):
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4", compute_dtype="bfloat16"))
    module.train()
    data = batch(4, 2, 16, [5, 9], module.model.config.vocab_size)
    layers = module.model.base_model.model.model.layers[0]
    outputs = {}
    for name, layer in (("q_proj", layers.self_attn.q_proj), ("gate_proj", layers.mlp.gate_proj)):
        layer.register_forward_hook(lambda _, args, out, name=name: outputs.update({name: (args[0].dtype, out.dtype)}))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        module.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_sum, count = module.compute_loss(data)
        (loss_sum / count).backward()
        return loss_sum.detach(), lora_grads(module)

    loss, grads = loss_and_grads()
    # PEFT and bitsandbytes keep a float32 input's output float32.
    assert outputs == {"q_proj": (torch.float32, torch.float32), "gate_proj": (torch.float32, torch.float32)}
    module.cast_adapted_layers_for_autocast()
    assert layers.self_attn.q_proj.cast_input_dtype_enabled is False
    cast_loss, cast_grads = loss_and_grads()
    # Half-size inputs kept for backward; the sum of base and adapter stays float32.
    assert outputs == {"q_proj": (torch.bfloat16, torch.float32), "gate_proj": (torch.bfloat16, torch.float32)}
    torch.testing.assert_close(cast_loss, loss, rtol=1e-2, atol=1e-2)
    for name, grad in grads.items():
        # bfloat16 rounding of the adapters' products: about 2% of each gradient's norm.
        assert float((cast_grads[name] - grad).norm() / grad.norm()) < 0.05, name
    # Outside autocast the layers keep float32.
    with torch.no_grad():
        module.compute_loss(data)
    assert outputs["q_proj"] == (torch.float32, torch.float32)


def test_under_autocast_a_small_adapter_contribution_is_not_rounded_away(tiny_model_dir):
    module = build(tiny_model_dir, quantization=QuantizationSettings(mode="nf4", compute_dtype="bfloat16"))
    module.eval()  # no dropout: the adapter's contribution is a plain product
    module.cast_adapted_layers_for_autocast()
    layer = module.model.base_model.model.model.layers[0].mlp.gate_proj
    x = torch.randn(2, 8, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = layer.get_base_layer()(x.to(torch.bfloat16)).float()
        a, b, scaling = layer.lora_A["default"].weight, layer.lora_B["default"], layer.scaling["default"]
        # A young adapter: its contribution about 1e-3 of the base's output, under half a bfloat16 step.
        b.weight.copy_(torch.randn(b.weight.shape, generator=torch.Generator().manual_seed(1)))
        contribution = (x @ a.T @ b.weight.T) * scaling
        b.weight.mul_(1e-3 * float(base.norm() / contribution.norm()))
        contribution = (x @ a.T @ b.weight.T) * scaling
        with torch.autocast("cpu", dtype=torch.bfloat16):
            added = layer(x) - layer.get_base_layer()(x.to(torch.bfloat16))
    # Added in bfloat16, about all of it was lost; in float32 only the adapter's own rounding remains.
    assert float((added - contribution).norm() / contribution.norm()) < 0.05
