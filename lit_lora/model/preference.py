"""Preference tuning with DPO (sigmoid or IPO loss); the reference is the same model without the trained adapter."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from peft import PeftModel
from torchmetrics.aggregation import MeanMetric

from lit_lora.errors import ConfigError
from lit_lora.model.base import LoRAModule
from lit_lora.model.loss import sequence_log_probs

# Name of the frozen copy of ``adapter_path`` that serves as the reference policy.
REFERENCE_ADAPTER = "reference"
REWARD_METRICS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: Literal["sigmoid", "ipo"],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the implicit rewards of both responses.

    With ``h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)``,
    the difference of the log-ratios of the chosen and rejected responses:

    - ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * h)``;
    - ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 * beta))^2``, with log-probabilities
      averaged over each response's tokens (pass them averaged).

    Args:
        policy_chosen: ``(B,)`` log-probabilities of the chosen responses under the trained model.
        policy_rejected: ``(B,)`` the same for the rejected responses.
        reference_chosen: ``(B,)`` log-probabilities of the chosen responses under the reference.
        reference_rejected: ``(B,)`` the same for the rejected responses.
        beta: Strength of the pull towards the reference (the KL penalty's weight).
        loss_type: ``sigmoid`` or ``ipo``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; the rewards are
        ``beta`` times the log-ratios, detached.
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    losses = -F.logsigmoid(beta * h) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DPOModule(LoRAModule):
    """Direct preference optimisation of a LoRA adapter, with no second model in memory.

    Trains on :class:`lit_lora.data.PreferenceDataModule` batches (chosen rows, then
    rejected rows). The reference log-probabilities come from the same quantized base:
    with the adapter switched off for a new adapter, or, when training continues an
    SFT adapter (``adapter_path``, the recipe's SFT-then-DPO), from a frozen second
    copy of that adapter, so that the reference is the SFT model as DPO assumes. A
    second LoRA adapter costs a few MB, not a second model.

    Logged on every step and on validation: ``loss``, ``rewards_chosen``,
    ``rewards_rejected`` (``beta`` times each response's log-ratio to the reference),
    ``reward_margin`` (their difference) and ``reward_accuracy`` (share of pairs whose
    chosen reward is the higher).

    Args:
        *args: ``LoRAModule``'s settings (model, quantization, lora, optimizer...).
        beta: Weight of the implicit KL penalty: lower lets the model move further from
            the reference. 0.1 is the usual default; 0.01-0.5 is the useful range.
        loss_type: ``sigmoid`` (the DPO loss) or ``ipo`` (squared loss on length-averaged
            log-ratios, which does not push margins without bound on noisy preferences).
        **kwargs: More ``LoRAModule`` settings.
    """

    count_unit: ClassVar[str] = "pairs"
    eval_prog_bar: ClassVar[tuple[str, ...]] = ("reward_accuracy",)

    def __init__(
        self, *args: Any, beta: float = 0.1, loss_type: Literal["sigmoid", "ipo"] = "sigmoid", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if beta <= 0:
            raise ConfigError(f"model.beta: {beta} must be > 0 (0.1 is the usual value).")
        if loss_type not in ("sigmoid", "ipo"):
            raise ConfigError(f"model.loss_type: '{loss_type}' is not sigmoid or ipo.")
        self.beta = beta
        self.loss_type = loss_type
        self._rewards: dict[str, torch.Tensor] = {}

    def apply_adapter(self, base: Any) -> PeftModel:
        model = super().apply_adapter(base)
        if self.adapter_path is not None:
            model.load_adapter(self.adapter_path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            model.set_adapter("default")
        return model

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Run the model as the reference policy: the starting adapter, or no adapter, without dropout.

        Without dropout the reference is one fixed function, and a policy that has not
        moved from it scores every pair at a margin of exactly 0.
        """
        training = self.model.training
        self.model.eval()
        try:
            if self.adapter_path is None:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(REFERENCE_ADAPTER)
                try:
                    yield
                finally:
                    # set_adapter marks the active adapter trainable: hand that back to "default".
                    self.model.set_adapter("default")
        finally:
            self.model.train(training)

    # ------------------------------------------------------------------ objective
    def sequence_log_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(2B,)`` log-probability of each row's response; averaged over its tokens for IPO."""
        inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"))
        if self.head_is_separable():
            log_probs, tokens = sequence_log_probs(
                self.hidden_states(*inputs), self.model.get_output_embeddings(), batch["labels"]
            )
        else:
            log_probs, tokens = sequence_log_probs(self(*inputs), torch.nn.Identity(), batch["labels"])
        return log_probs / tokens.clamp(min=1) if self.loss_type == "ipo" else log_probs

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed DPO loss of the batch's pairs and the number of pairs.

        Also keeps the pairs' rewards for logging (``self._rewards``).
        """
        policy = self.sequence_log_probs(batch)
        with torch.no_grad(), self.reference():
            reference = self.sequence_log_probs(batch)
        pairs = policy.size(0) // 2
        losses, chosen, rejected = preference_losses(
            policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], self.beta, self.loss_type
        )
        self._rewards = {
            "rewards_chosen": chosen,
            "rewards_rejected": rejected,
            "reward_margin": chosen - rejected,
            "reward_accuracy": (chosen > rejected).float(),
        }
        return losses.sum(), torch.tensor(pairs, device=losses.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        pairs = self._rewards["reward_accuracy"].numel()
        self.log_dict(
            {f"train/{k}": v.mean() for k, v in self._rewards.items()}, on_step=True, on_epoch=False, batch_size=pairs
        )
        return loss

    def chance_loss(self) -> float:
        """The loss where the model has not moved from the reference: ``ln 2`` (sigmoid) or ``1 / (4 beta^2)`` (IPO)."""
        return math.log(2) if self.loss_type == "sigmoid" else 1 / (4 * self.beta**2)

    # ------------------------------------------------------------------ evaluation
    def build_eval_metrics(self) -> torch.nn.ModuleDict:
        """The loss and the mean of each reward metric."""
        return torch.nn.ModuleDict({"loss": MeanMetric(), **{name: MeanMetric() for name in REWARD_METRICS}})

    def eval_step(self, split: Literal["val", "test"], batch: dict[str, torch.Tensor]) -> None:
        """Update the loss, then the reward metrics of the pairs it scored."""
        super().eval_step(split, batch)
        for name, values in self._rewards.items():
            self.split_metrics[split][name].update(values)

    def eval_metrics(self, split: Literal["val", "test"]) -> dict[str, torch.Tensor]:
        """``loss`` and the reward metrics."""
        return {name: metric.compute() for name, metric in self.split_metrics[split].items()}
