import math

import pytest
import torch

from lit_lora.errors import ConfigError
from lit_lora.training.optim import (
    LRSchedule,
    parameter_groups,
    resync_learning_rates,
    scale_group_learning_rates,
)


def test_cosine_schedule_exact_values():
    # 10 steps, 3% warmup -> ceil(0.3) = 1 warmup step.
    schedule = LRSchedule(kind="cosine", warmup_ratio=0.03)
    assert schedule.num_warmup_steps(10) == 1
    values = [schedule.multiplier(s, 10) for s in range(10)]
    assert values[0] == pytest.approx(1 / 2)
    expected = [0.5 * (1 + math.cos(math.pi * (s - 1) / 9)) for s in range(1, 10)]
    assert values[1:] == pytest.approx(expected)
    assert values[1] == 1.0
    # Monotonically decaying after warmup.
    assert all(a > b for a, b in zip(values[1:], values[2:]))


def test_warmup_steps_override_and_floor():
    schedule = LRSchedule(kind="cosine", warmup_ratio=0.5, warmup_steps=4, min_lr_ratio=0.1)
    assert schedule.num_warmup_steps(100) == 4
    assert [schedule.multiplier(s, 100) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert schedule.multiplier(4, 100) == pytest.approx(1.0)
    # Halfway through the decay the cosine is at the midpoint between peak and floor.
    assert schedule.multiplier(4 + 48, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.multiplier(100, 100) == pytest.approx(0.1)


def test_linear_and_constant_variants():
    linear = LRSchedule(kind="linear", warmup_steps=2, min_lr_ratio=0.0)
    assert [linear.multiplier(s, 6) for s in range(6)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])
    constant = LRSchedule(kind="constant", warmup_steps=2)
    assert [constant.multiplier(s, 6) for s in range(6)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])


def test_schedule_steps_the_optimizer_learning_rate():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.2)
    scheduler = LRSchedule(kind="linear", warmup_steps=1).build(optimizer, total_steps=3)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.2, 0.1])


@pytest.mark.parametrize(
    "kwargs",
    [{"warmup_ratio": 1.0}, {"warmup_ratio": -0.1}, {"warmup_steps": -1}, {"min_lr_ratio": 1.5}],
)
def test_schedule_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError, match="model.scheduler"):
        LRSchedule(**kwargs)


def test_parameter_groups_split_decay_no_decay_and_embeddings():
    named = {
        "base.layers.0.q_proj.lora_A.default.weight": torch.nn.Parameter(torch.zeros(4, 8)),
        "base.layers.0.q_proj.lora_B.default.weight": torch.nn.Parameter(torch.zeros(8, 4)),
        "base.layers.0.q_proj.base_layer.bias": torch.nn.Parameter(torch.zeros(8)),
        "base.layers.0.input_layernorm.weight": torch.nn.Parameter(torch.zeros(8)),
        "base.embed_tokens.modules_to_save.default.weight": torch.nn.Parameter(torch.zeros(16, 8)),
        "base.lm_head.modules_to_save.default.weight": torch.nn.Parameter(torch.zeros(16, 8)),
        "base.frozen.weight": torch.nn.Parameter(torch.zeros(8, 8), requires_grad=False),
    }
    groups = parameter_groups(named.items(), embedding_lr_ratio=0.1)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(named[k]) for k in list(named)[:2]}
    assert ids[1] == {id(named[k]) for k in list(named)[2:4]}
    assert ids[2] == {id(named[k]) for k in list(named)[4:6]}
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0

    optimizer = torch.optim.AdamW(groups, lr=2e-4, weight_decay=0.01)
    scale_group_learning_rates(optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-4, 2e-4, 2e-5])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0, 0.01]


def test_parameter_groups_drop_empty_groups():
    named = [("a.lora_A.weight", torch.nn.Parameter(torch.zeros(2, 2)))]
    groups = parameter_groups(named, embedding_lr_ratio=0.1)
    assert len(groups) == 1


def test_zero_steps_is_a_config_error():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="max_steps"):
        LRSchedule().build(optimizer, 0)


def test_resync_follows_a_longer_schedule_after_restore():
    param = torch.nn.Parameter(torch.zeros(2))
    short = torch.optim.SGD([param], lr=1.0)
    short_schedule = LRSchedule(kind="linear", warmup_steps=0).build(short, total_steps=4)
    for _ in range(4):
        short.step()
        short_schedule.step()
    assert short.param_groups[0]["lr"] == 0.0  # the short run decayed to its end

    longer = torch.optim.SGD([param], lr=1.0)
    longer_schedule = LRSchedule(kind="linear", warmup_steps=0).build(longer, total_steps=8)
    longer.load_state_dict(short.state_dict())
    longer_schedule.load_state_dict(short_schedule.state_dict())
    resync_learning_rates(longer_schedule)
    assert longer.param_groups[0]["lr"] == pytest.approx(0.5)  # step 4 of 8
