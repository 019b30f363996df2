"""DPO: the loss formulas, the module's loss against a hand computation on a fixed batch, training through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_lora.cli import main
from lit_lora.data import PreferenceDataModule
from lit_lora.model import DPOModule, LoRASettings, QuantizationSettings
from lit_lora.model.preference import preference_losses

REPO = Path(__file__).resolve().parents[2]
PAIRS = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}", "rejected": f"{i + 2}, I think"} for i in range(12)]


def write_pairs(path: Path, pairs: list[dict]) -> str:
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return str(path)


def test_sigmoid_and_ipo_losses_by_hand():
    policy_chosen, policy_rejected = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.5])
    # h = (pc - rc) - (pr - rr): (1 - -0.5) = 1.5 and (-1 - 0.5) = -1.5
    losses, chosen, rejected = preference_losses(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, 0.5, "sigmoid"
    )
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.75)), math.log1p(math.exp(0.75))])
    assert chosen.tolist() == pytest.approx([0.5, -0.5])
    assert rejected.tolist() == pytest.approx([-0.25, 0.25])
    losses, _, _ = preference_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected, 0.5, "ipo")
    assert losses.tolist() == pytest.approx([(1.5 - 1.0) ** 2, (-1.5 - 1.0) ** 2])


def pair_batch(tmp_path: Path, tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    data = PreferenceDataModule(
        write_pairs(tmp_path / "pairs.jsonl", PAIRS[:3]), tokenizer_name_or_path=str(tiny_model_dir), batch_size=3
    )
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def response_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum_t log p(label_t) over each row's supervised tokens, from full logits."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (targets != -100)).sum(dim=1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_module_loss_equals_the_dpo_formula_on_a_fixed_batch(tmp_path, tiny_model_dir, loss_type):
    module = DPOModule(
        str(tiny_model_dir),
        random_init=True,
        beta=0.2,
        loss_type=loss_type,
        quantization=QuantizationSettings(mode="none"),
        lora=LoRASettings(r=4, alpha=8, dropout=0.0, init_lora_weights=False),  # a policy away from the reference
    )
    torch.manual_seed(0)
    module.configure_model()
    batch = pair_batch(tmp_path, tiny_model_dir)
    with torch.no_grad():
        loss_sum, pairs = module.compute_loss(batch)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        policy = response_log_probs(module.model(**inputs).logits, batch["labels"])
        with module.model.disable_adapter():
            reference = response_log_probs(module.model(**inputs).logits, batch["labels"])
    if loss_type == "ipo":
        tokens = (batch["labels"][:, 1:] != -100).sum(dim=1)
        policy, reference = policy / tokens, reference / tokens
    h = (policy[:3] - reference[:3]) - (policy[3:] - reference[3:])
    expected = -F.logsigmoid(0.2 * h) if loss_type == "sigmoid" else (h - 1 / (2 * 0.2)) ** 2
    assert pairs.item() == 3
    assert loss_sum.item() == pytest.approx(expected.sum().item(), rel=1e-5)
    assert module._rewards["reward_margin"].tolist() == pytest.approx((0.2 * h).tolist(), rel=1e-4, abs=1e-6)


def test_a_new_adapter_starts_at_the_reference(tmp_path, tiny_model_dir):
    module = DPOModule(str(tiny_model_dir), random_init=True, quantization=QuantizationSettings(mode="none"))
    module.configure_model()
    with torch.no_grad():
        loss_sum, pairs = module.compute_loss(pair_batch(tmp_path, tiny_model_dir))
    # B = 0 in every new LoRA update: the policy is the reference, every margin 0, loss ln 2.
    assert loss_sum.item() / pairs.item() == pytest.approx(math.log(2), abs=1e-6)
    assert module._rewards["reward_margin"].abs().max().item() == 0.0
    assert module.chance_loss() == pytest.approx(math.log(2))


def test_sft_then_dpo_from_the_sft_adapter_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    common = ["--config", "configs/tiny.yaml", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "sft")])
    sft_adapter = tmp_path / "sft" / "adapter"
    config = tmp_path / "dpo.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {
                    "class_path": "lit_lora.DPOModule",
                    "init_args": {"adapter_path": str(sft_adapter), "beta": 0.1},
                },
                "data": {
                    "class_path": "lit_lora.data.PreferenceDataModule",
                    "init_args": {
                        "train_file": write_pairs(tmp_path / "train.jsonl", PAIRS[:8]),
                        "val_file": write_pairs(tmp_path / "val.jsonl", PAIRS[8:]),
                        "batch_size": 4,
                    },
                },
            }
        )
    )
    cli = main(
        [
            "fit",
            *common,
            "--config",
            str(config),
            "--trainer.accumulate_grad_batches",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path / "dpo"),
        ]
    )
    module = cli.model
    assert isinstance(module, DPOModule)
    # The SFT adapter trains as "default"; its frozen copy is the reference.
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in name for name in trainable)
    assert any(".reference." in name for name, _ in module.named_parameters())
    metrics = cli.trainer.callback_metrics
    for name in ("val/loss", "val/rewards_chosen", "val/rewards_rejected", "val/reward_margin", "val/reward_accuracy"):
        assert torch.isfinite(metrics[name]), name
    assert (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
