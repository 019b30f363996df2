"""The memory estimate, hand-computed on a small shape, read from a config alone, and ``data.batch_size: auto``.

The config-only shape and optimizer state (what ``python -m lit_lora estimate`` uses
before loading anything) are checked against the loaded tiny model and a stepped
optimizer.
"""

from __future__ import annotations

import dataclasses

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoConfig

from lit_lora import LoRAModule, LoRASettings, QuantizationSettings
from lit_lora.cli import main
from lit_lora.training.memory import checkpointing_enabled, estimate_memory
from lit_lora.training.optim import default_optimizer
from lit_lora.training.planning import CPU_MAX_GROWTH, checkpointing_modes, largest_fitting_batch, plan_batch
from lit_lora.training.shape import (
    DEFAULT_OPTIMIZER,
    ModelShape,
    configured_optimizer_state_bytes,
    meta_model,
    optimizer_state_bytes,
    quantized_bytes_per_param,
)
from tests.helpers.tiny import REPO

SHAPE = ModelShape(
    quantizable_params=1_000_000,
    other_params=10_000,
    trainable_params=2_000,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    vocab_size=512,
)
NF4 = QuantizationSettings(mode="nf4", double_quant=True, compute_dtype="float32")


@pytest.mark.parametrize(
    "settings, expected",
    [
        # 4 bits, plus an 8-bit absmax per 64 weights and a float32 constant per 64 x 256.
        (NF4, 0.5 + 1 / 64 + 4 / (64 * 256)),
        # 4 bits, plus a float32 absmax per 64 weights.
        (QuantizationSettings(mode="fp4", double_quant=False), 0.5 + 4 / 64),
        (QuantizationSettings(mode="int8"), 1.0),
        (QuantizationSettings(mode="none", compute_dtype="bfloat16"), 2),
        (QuantizationSettings(mode="none", compute_dtype="float32"), 4),
    ],
)
def test_bytes_per_base_weight_follow_the_quantization_mode(settings, expected):
    assert quantized_bytes_per_param(settings) == pytest.approx(expected)


def test_every_component_is_exact_for_a_small_shape():
    estimate = estimate_memory(SHAPE, 2, 8, NF4, optimizer_bytes=4_000, gradient_checkpointing=True)
    assert estimate.base_weights == round(1_000_000 * (0.5 + 1 / 64 + 4 / 16384) + 10_000 * 4)
    assert estimate.adapter == estimate.gradients == 2_000 * 4
    assert estimate.optimizer == 4_000
    # 16 tokens x (2 layer inputs x 64 + one layer's 16 x 64 + 4 x 128) float32 elements.
    assert estimate.activations == 16 * (2 * 64 + 16 * 64 + 4 * 128) * 4
    # 16 tokens x 512 scores, float32 logits plus the loss's 8 bytes.
    assert estimate.logits == 16 * 512 * (4 + 8)
    assert estimate.overhead == 0
    # On CPU, two passes of the 1M quantized weights dequantized to float32, kept by glibc.
    assert estimate.retained == 2 * 1_000_000 * 4
    assert estimate.total == sum(
        [estimate.base_weights, 16_000, 4_000, estimate.activations, estimate.logits, estimate.retained]
    )
    assert estimate.after_loading == estimate.total - estimate.base_weights - estimate.adapter


def test_sharded_weights_and_optimizer_state_count_one_devices_share():
    whole = estimate_memory(SHAPE, 2, 8, NF4, optimizer_bytes=4_000, gradient_checkpointing=True)
    sharded = estimate_memory(
        SHAPE, 2, 8, NF4, optimizer_bytes=4_000, gradient_checkpointing=True, weight_shards=4, optimizer_shards=4
    )
    layers = 1_000_000 * (0.5 + 1 / 64 + 4 / 16384)
    # A quarter of the base, plus one of its 2 decoder layers gathered whole while it runs.
    assert sharded.base_weights == round(whole.base_weights / 4 + layers / 2)
    assert sharded.optimizer == 1_000
    assert (sharded.adapter, sharded.activations) == (whole.adapter, whole.activations)


def test_unquantized_weights_stay_in_the_compute_dtype():
    bf16 = QuantizationSettings(mode="none", compute_dtype="bfloat16")
    estimate = estimate_memory(SHAPE, 1, 8, bf16, optimizer_bytes=0, gradient_checkpointing=True)
    assert estimate.base_weights == 1_010_000 * 2
    assert estimate.retained == 0  # nothing is dequantized


def test_nothing_is_retained_on_cuda_without_training_or_with_the_heap_settings():
    assert estimate_memory(SHAPE, 1, 8, NF4, 0, True, cuda=True).retained == 0
    assert estimate_memory(SHAPE, 1, 8, NF4, 0, True, training=False).retained == 0
    assert estimate_memory(SHAPE, 1, 8, NF4, 0, True, tuned_heap=True).retained == 0


def test_estimate_grows_with_batch_and_length_and_checkpointing_saves_activations():
    def total(batch, length, checkpointing=True):
        return estimate_memory(SHAPE, batch, length, NF4, 0, checkpointing).total

    assert total(1, 64) < total(2, 64) < total(4, 64)
    assert total(2, 64) < total(2, 128) < total(2, 256)
    full = estimate_memory(SHAPE, 2, 64, NF4, 0, gradient_checkpointing=False).activations
    assert estimate_memory(SHAPE, 2, 64, NF4, 0, gradient_checkpointing=True).activations < full
    eager = estimate_memory(SHAPE, 2, 64, NF4, 0, gradient_checkpointing=False, eager_attention=True)
    # heads x t probabilities per token in each layer, and their gradient in one layer.
    assert eager.activations == full + 2 * 64 * (2 + 1) * (4 * 64) * 4


def test_selective_checkpointing_adds_the_adapted_layers_outputs():
    shape = dataclasses.replace(SHAPE, adapted_outputs=700)
    full = estimate_memory(shape, 2, 8, NF4, 0, gradient_checkpointing=True).activations
    selective = estimate_memory(shape, 2, 8, NF4, 0, gradient_checkpointing="selective").activations
    # 16 tokens x 700 float32 outputs.
    assert selective == full + 16 * 700 * 4


@pytest.mark.parametrize("setting, enabled", [(True, True), (False, False), ("auto", True), ("selective", True)])
def test_checkpointing_counts_as_on_unless_false(setting, enabled):
    assert checkpointing_enabled(setting) is enabled
    with_setting = estimate_memory(SHAPE, 2, 64, NF4, 0, gradient_checkpointing=setting).activations
    assert with_setting == estimate_memory(SHAPE, 2, 64, NF4, 0, gradient_checkpointing=enabled).activations


def test_the_peak_counts_loading_or_training_whichever_is_larger():
    def estimate(loading):
        return estimate_memory(SHAPE, 2, 8, NF4, 4_000, True, loading=loading, process=True)

    trained = estimate(0)
    assert trained.total == trained.overhead + trained.base_weights + trained.adapter + trained.after_loading
    assert estimate(trained.after_loading - 1).total == trained.total
    assert estimate(10**9).total == trained.overhead + trained.base_weights + trained.adapter + 10**9


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda p: torch.optim.AdamW(p), 8192 * 8),
        # Two 1-byte states, each with a float32 scale per block of 256.
        (lambda p: bnb.optim.AdamW8bit(p), 2 * (8192 + 4 * 8192 // 256)),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 8192 * 4),
        (lambda p: torch.optim.SGD(p, lr=0.1), 0),
    ],
)
def test_optimizer_state_follows_the_optimizer(build, expected):
    params = [torch.nn.Parameter(torch.zeros(64, 128))]  # 8192 elements: 8-bit states apply
    assert optimizer_state_bytes(build(params), params) == expected


def test_small_tensors_keep_float32_states_in_8bit_optimizers():
    params = [torch.nn.Parameter(torch.zeros(8, 64))]  # below bitsandbytes' min_8bit_size of 4096
    assert optimizer_state_bytes(bnb.optim.PagedAdamW8bit(params), params) == 512 * 8


def test_largest_fitting_batch_is_a_power_of_two_within_budget_and_limit():
    def need(size):
        return 100 * size

    assert largest_fitting_batch(need, limit=16, budget=650) == 4
    assert largest_fitting_batch(need, limit=2, budget=10_000) == 2
    assert largest_fitting_batch(need, limit=16, budget=10) == 1


def fit_auto(tmp_path, monkeypatch, *extra):
    """One optimizer step of configs/tiny.yaml with ``batch_size: auto``; the CLI and what it printed."""
    # Captured at the source: whether Lightning's log reaches pytest's handlers depends
    # on what imported Lightning first.
    printed = []
    monkeypatch.setattr("lit_lora.training.planning.rank_zero_info", printed.append)
    cli = main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.enable_progress_bar",
            "false",
            "--data.init_args.batch_size",
            "auto",
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "0",
            *extra,
        ]
    )
    return cli, "\n".join(printed)


def test_auto_batch_size_picks_a_micro_batch_and_accumulation(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli, log = fit_auto(tmp_path, monkeypatch, "--data.init_args.effective_batch_size", "16")
    micro, accumulation = cli.datamodule.batch_size, cli.trainer.accumulate_grad_batches
    # The tiny model needs a few MiB per batch: all 16 fit at once.
    assert (micro, accumulation) == (16, 1)
    assert f"micro-batch {micro} x gradient accumulation {accumulation}" in log
    # Taken at the longest example read, which is shorter than max_length.
    length = cli.datamodule.longest_batch_length()
    assert length == max(stats.max_length for stats in cli.datamodule.stats.values()) < 128
    assert (
        f"estimated memory at batch_size 16 x sequence length {length} (the longest batch; data.max_length 128)" in log
    )


def test_auto_batch_size_shrinks_and_warns_when_memory_is_short(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    # 1 MB: 90% of it holds no micro-batch of 128 tokens (~1.6 MB each), so 1 is the floor.
    monkeypatch.setattr("lit_lora.training.planning.available_memory", lambda device: 1_000_000)
    with pytest.warns(UserWarning, match="will likely not fit"):
        cli, log = fit_auto(tmp_path, monkeypatch)
    micro, accumulation = cli.datamodule.batch_size, cli.trainer.accumulate_grad_batches
    assert (micro, accumulation) == (1, 16)
    assert micro * accumulation >= 16
    assert "micro-batch 1 x gradient accumulation 16 (effective batch 16" in log


TINY_SETTINGS = [
    (QuantizationSettings(mode="nf4", compute_dtype="float32"), LoRASettings(r=8)),
    (QuantizationSettings(mode="int8"), LoRASettings(r=4, target_modules=["q_proj", "v_proj"])),
    (
        QuantizationSettings(mode="none", compute_dtype="float32"),
        LoRASettings(r=4, modules_to_save=["lm_head"], use_dora=True),
    ),
]


@pytest.fixture(scope="module", params=TINY_SETTINGS, ids=["nf4", "int8-qv", "none-dora-head"])
def tiny_loaded(request, tiny_model_dir):
    """The tiny model loaded and adapted as fit does, with its settings."""
    quantization, lora = request.param
    module = LoRAModule(str(tiny_model_dir), random_init=True, quantization=quantization, lora=lora)
    module.configure_model()
    return module


def test_shape_from_the_config_alone_equals_the_loaded_models(tiny_loaded, tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    from_config = ModelShape.from_config(config, tiny_loaded.quantization, tiny_loaded.lora.to_peft_config())
    assert from_config == ModelShape.from_model(tiny_loaded.model)
    # Dropout 0.05 before every adapter: 2 layers x (6 projections of the 64-wide stream +
    # the 128-wide down_proj), or q_proj and v_proj alone.
    targets = tiny_loaded.lora.target_modules
    assert from_config.masked_inputs == (2 * (6 * 64 + 128) if targets == "all-linear" else 2 * 2 * 64)


def test_checkpointing_on_cpu_keeps_a_byte_per_masked_input():
    masked = dataclasses.replace(SHAPE, masked_inputs=300)
    for setting in (True, "selective"):
        plain = estimate_memory(SHAPE, 2, 8, NF4, 0, gradient_checkpointing=setting).activations
        # 16 tokens x 300 one-byte mask elements.
        assert estimate_memory(masked, 2, 8, NF4, 0, gradient_checkpointing=setting).activations == plain + 16 * 300
    # Without checkpointing autograd keeps them (the per-layer count); on CUDA they are drawn again.
    assert (
        estimate_memory(masked, 2, 8, NF4, 0, False).activations
        == estimate_memory(SHAPE, 2, 8, NF4, 0, False).activations
    )
    on_cuda = estimate_memory(SHAPE, 2, 8, NF4, 0, True, cuda=True).activations
    assert estimate_memory(masked, 2, 8, NF4, 0, True, cuda=True).activations == on_cuda


# A tensor's optimizer state, as allocated once stepped: every tensor in its state but
# the step counter and bitsandbytes' quantization maps (one shared 256-entry table).
def stepped_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for key, value in state.items()
        if torch.is_tensor(value) and key != "step" and not key.startswith("qmap")
    )


@pytest.mark.parametrize(
    "class_path, init_args",
    [
        ("torch.optim.AdamW", {}),
        ("bitsandbytes.optim.PagedAdamW8bit", {}),
        ("bitsandbytes.optim.AdamW", {"optim_bits": 8}),
        ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9}),
        ("torch.optim.SGD", {"lr": 0.1}),
    ],
)
def test_optimizer_state_from_the_config_equals_the_built_and_stepped_optimizers(tiny_model_dir, class_path, init_args):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    lora = LoRASettings(r=64)  # 64 x 64 = 4096-element tensors: 8-bit states apply to some
    meta = [p for p in meta_model(config, NF4, lora.to_peft_config()).parameters() if p.requires_grad]
    module = LoRAModule(str(tiny_model_dir), random_init=True, quantization=NF4, lora=lora)
    module.configure_model()
    params = module.trainable_parameters()
    module_name, name = class_path.rsplit(".", 1)
    optimizer = getattr(__import__(module_name, fromlist=[name]), name)(params, **init_args)
    for p in params:
        p.grad = torch.ones_like(p)
    built = optimizer_state_bytes(optimizer, params)
    optimizer.step()
    assert configured_optimizer_state_bytes(class_path, init_args, meta) == built == stepped_state_bytes(optimizer)


def test_no_optimizer_in_the_config_is_the_default_optimizer():
    params = [torch.nn.Parameter(torch.zeros(64, 128))]
    assert DEFAULT_OPTIMIZER.endswith(type(default_optimizer(params)).__name__)
    expected = optimizer_state_bytes(default_optimizer(params), params)
    assert configured_optimizer_state_bytes(None, {}, params) == expected


def test_plan_batch_checkpoints_only_when_memory_needs_it():
    # Without checkpointing a micro-batch needs 100 per row, with it 30 (plus 100 fixed).
    def need(size: int, checkpointing: bool, layers: int) -> int:
        return 100 + size * (30 if checkpointing else 100)

    auto = checkpointing_modes("auto", selective=False, cuda=False)
    assert auto == (False, True) == checkpointing_modes("auto", selective=False, cuda=True)
    assert plan_batch(need, 4, 16, auto, 600, 2) == (4, False, 0)  # fits without
    assert plan_batch(need, 8, 16, auto, 600, 2) == (8, True, 2)  # only fits with
    assert plan_batch(need, 8, 16, auto, 100, 2) == (8, True, 2)  # fits neither way: the smaller need
    assert plan_batch(need, "auto", 16, auto, 500, 2) == (8, True, 2)  # a larger micro-batch with it
    assert plan_batch(need, "auto", 2, auto, 500, 2) == (2, False, 0)  # the target fits without
    assert plan_batch(need, "auto", 16, (False,), 500, 2) == (4, False, 0)
    assert plan_batch(need, 8, 16, (True,), 10_000, 2) == (8, True, 2)


def test_auto_takes_the_fastest_checkpointing_mode_that_fits():
    per_row = {False: 100, "selective": 50, True: 30}

    def need(size: int, mode: bool | str, layers: int) -> int:
        return 100 + size * per_row[mode]

    auto = checkpointing_modes("auto", selective=True, cuda=True)
    assert auto == (False, "selective", True)
    assert plan_batch(need, 4, 16, auto, 600, 2) == (4, False, 0)
    assert plan_batch(need, 8, 16, auto, 600, 2) == (8, "selective", 2)
    assert plan_batch(need, 16, 16, auto, 600, 2) == (16, True, 2)
    assert plan_batch(need, "auto", 16, auto, 600, 2) == (16, True, 2)  # the larger micro-batch first
    assert checkpointing_modes("selective", selective=True, cuda=True) == ("selective",)
    # On CPU selective first: what no checkpointing would keep costs time there too.
    cpu = checkpointing_modes("auto", selective=True, cuda=False)
    assert cpu == ("selective", True)
    assert plan_batch(need, 4, 16, cpu, 600, 2) == (4, "selective", 2)
    assert plan_batch(need, 16, 16, cpu, 600, 2) == (16, True, 2)
    # ... while the process needs at most CPU_MAX_GROWTH (1.5) times what it needs with
    # full checkpointing: 500 against 340 (1.47 times) at eight rows, 900 against 580
    # (1.55 times) at sixteen, unless the process holds 200 more (1,100 against 780).
    assert CPU_MAX_GROWTH == 1.5
    assert plan_batch(need, 8, 16, cpu, 1_000, 2, max_growth=CPU_MAX_GROWTH) == (8, "selective", 2)
    assert plan_batch(need, 16, 16, cpu, 1_000, 2, max_growth=CPU_MAX_GROWTH) == (16, True, 2)
    assert plan_batch(need, 16, 16, cpu, 1_000, 2, max_growth=1.5, resident=200) == (16, "selective", 2)


def test_auto_checkpoints_the_fewest_layers_that_fit():
    # Four layers, each keeping per row 25 without checkpointing, 10 with selective, 5 with full.
    per_layer = {"selective": 10, True: 5}

    def need(size: int, mode: bool | str, layers: int) -> int:
        kept = 25 * (4 - layers) + (per_layer[mode] * layers if mode else 0)
        return 100 + size * kept

    cpu = ("selective", True)
    # Four rows: 500 - 60 per selective layer; full on every layer 180. The process's
    # growth bound (1.5 x (300 + 180) = 720) leaves need <= 420: two layers.
    assert plan_batch(need, 4, 16, cpu, 1_000, 4, max_growth=1.5, resident=300, partial=True) == (4, "selective", 2)
    assert plan_batch(need, 4, 16, cpu, 350, 4, max_growth=1.5, resident=300, partial=True) == (4, "selective", 3)
    # An explicit mode checkpoints every layer; so does auto when nothing less fits.
    assert plan_batch(need, 4, 16, cpu, 1_000, 4, max_growth=1.5, resident=300) == (4, "selective", 4)
    assert plan_batch(need, 4, 16, cpu, 1_000, 4, max_growth=1.5, partial=True) == (4, "selective", 4)
    # Nothing fits: the count that needs least.
    assert plan_batch(need, 4, 16, ("selective",), 10, 4, partial=True) == (4, "selective", 4)
    # A process that dwarfs the activations checkpoints none: no checkpointing.
    assert plan_batch(need, 4, 16, cpu, 1_000, 4, max_growth=1.5, resident=10_000, partial=True) == (4, False, 0)
    # On CUDA the budget alone bounds it: off when it fits, else the fewest layers.
    cuda = (False, "selective", True)
    assert plan_batch(need, 4, 16, cuda, 600, 4, partial=True) == (4, False, 0)
    assert plan_batch(need, 4, 16, cuda, 400, 4, partial=True) == (4, "selective", 2)


def test_activations_of_partial_checkpointing_step_layer_by_layer():
    shape = dataclasses.replace(SHAPE, num_layers=4, adapted_outputs=4 * 448, masked_inputs=4 * 512)
    for mode in (True, "selective"):

        def activations(layers, mode=mode):
            return estimate_memory(shape, 2, 8, NF4, 0, mode, checkpointed_layers=layers).activations

        assert activations(None) == activations(4)
        assert activations(0) == estimate_memory(shape, 2, 8, NF4, 0, False).activations
        # Each layer checkpointed (16 tokens, float32) keeps its 64-wide input, its
        # one-byte masks and, selective, its 448 base outputs, instead of 16 x 64 +
        # 4 x 128 activations; the last one leaves the recomputed layer's.
        kept = 64 + (448 if mode == "selective" else 0)
        step = 16 * ((16 * 64 + 4 * 128 - kept) * 4 - 512)
        assert [activations(n) - activations(n + 1) for n in range(3)] == [step] * 3
        assert activations(3) - activations(4) == step - 16 * (16 * 64 + 4 * 128) * 4
