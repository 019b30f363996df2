"""Evaluation and prediction: what a task's module does in ``validate``, ``test`` and ``predict``.

:class:`EvaluationHooks` is the half of :class:`~lit_lora.model.base.LoRAModule` that
runs outside of training. Lightning's ``validation_step``, ``test_step`` and their
epoch ends are defined once here and call public hooks, so a task overrides
:meth:`~EvaluationHooks.build_eval_metrics`, :meth:`~EvaluationHooks.eval_step` and
:meth:`~EvaluationHooks.eval_metrics` (``docs/extending.md``) instead of four Lightning hooks.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torchmetrics.aggregation import MeanMetric

from lit_lora.model.attention import AttentionByLength
from lit_lora.model.generation import end_token_ids, generate_texts


class EvaluationHooks:
    """Validation and test metrics per split, and greedy generation for ``predict``.

    Mixed into a ``LightningModule`` that provides ``compute_loss``, ``model``,
    ``tokenizer``, ``max_new_tokens`` and ``split_metrics`` (a ``ModuleDict`` holding
    :meth:`build_eval_metrics` for ``val`` and ``test``).
    """

    # The eval metrics shown on the progress bar as well as logged.
    eval_prog_bar: ClassVar[tuple[str, ...]] = ("loss", "perplexity")
    split_metrics: torch.nn.ModuleDict
    attention: AttentionByLength

    # Lightning's evaluation hooks, shared by every task: they pick the batch's attention
    # kernel (lit_lora.model.attention) and call the public eval hooks below.
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.attention.select(batch["input_ids"].size(-1))
        self.eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.log_eval_metrics("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.attention.select(batch["input_ids"].size(-1))
        self.eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self.log_eval_metrics("test")

    def build_eval_metrics(self) -> torch.nn.ModuleDict:
        """The metrics of one evaluation split; built once per split, after the model.

        Returns:
            Metrics by name; ``loss``, a ``MeanMetric``, must be among them.
        """
        return torch.nn.ModuleDict({"loss": MeanMetric()})

    def eval_step(self, split: Literal["val", "test"], batch: dict[str, torch.Tensor]) -> None:
        """Update ``split``'s metrics with one batch: here the loss, weighted by its count.

        Args:
            split: ``val`` or ``test``.
            batch: A batch from that split's dataloader.
        """
        # Weighted by supervised tokens, so the mean is over tokens, not batches.
        loss_sum, count = self.compute_loss(batch)
        self.split_metrics[split]["loss"].update(loss_sum / count.clamp(min=1), count)

    def eval_metrics(self, split: Literal["val", "test"]) -> dict[str, torch.Tensor]:
        """``split``'s metrics over the batches seen, by name without the split: here loss and perplexity.

        Args:
            split: ``val`` or ``test``.
        """
        loss = self.split_metrics[split]["loss"].compute()
        return {"loss": loss, "perplexity": torch.exp(loss)}

    def log_eval_metrics(self, split: Literal["val", "test"]) -> None:
        """Log :meth:`eval_metrics` as ``{split}/{name}`` and reset them; the names in ``eval_prog_bar`` on the bar.

        Args:
            split: ``val`` or ``test``.
        """
        metrics = self.split_metrics[split]
        if metrics["loss"].update_count == 0:
            return
        values = {f"{split}/{name}": value for name, value in self.eval_metrics(split).items()}
        for metric in metrics.values():
            metric.reset()
        shown = {f"{split}/{name}" for name in self.eval_prog_bar}
        self.log_dict({k: v for k, v in values.items() if k not in shown})
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        """Generate an answer for each prompt of a left-padded prompt batch."""
        texts = self.generate(batch["input_ids"], batch["attention_mask"])
        prompts = [
            self.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
        ]
        return [
            {"prompt": prompt, "prediction": text, "reference": reference}
            for prompt, text, reference in zip(prompts, texts, batch["reference"])
        ]

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int | None = None
    ) -> list[str]:
        """Greedy continuations of left-padded prompts with the current adapter, each ending
        at EOS or at the chat template's end-of-turn token.

        Args:
            input_ids: ``(B, T)`` left-padded prompt ids.
            attention_mask: ``(B, T)``, 0 on the padding.
            max_new_tokens: Overrides the module's ``max_new_tokens``.
        """
        limit = max_new_tokens or self.max_new_tokens
        stop = end_token_ids(self.tokenizer)
        return generate_texts(self.model, self.tokenizer, input_ids, attention_mask, limit, stop_token_ids=stop)
