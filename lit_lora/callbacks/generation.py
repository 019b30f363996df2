"""Answers to held-out prompts before and after fine-tuning, scored by exact match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_lora.data.collate import PromptCollator


class GenerationPreview(Callback):
    """Generate greedy answers for held-out prompts when fitting starts and when it ends.

    Prints a few prompts with both answers and the reference, and the exact-match
    rate (answer equals reference, ignoring surrounding whitespace) before and after.
    Everything is also written to ``<trainer.default_root_dir>/generation_preview.json``.

    Args:
        split: Whose prompts to use: the data module's ``validation``, ``test`` or ``predict`` split.
        num_examples: How many prompts are generated and scored.
        num_printed: How many of them are printed side by side.
        batch_size: Prompts generated at once.
        max_new_tokens: Most tokens generated per answer.
    """

    def __init__(
        self,
        split: str = "validation",
        num_examples: int = 32,
        num_printed: int = 3,
        batch_size: int = 16,
        max_new_tokens: int = 64,
    ) -> None:
        self.split = split
        self.num_examples = num_examples
        self.num_printed = num_printed
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.before: list[str] = []

    def _generate(self, trainer: Trainer, pl_module: LightningModule) -> tuple[list[str], list[str]]:
        examples = trainer.datamodule.prompt_examples(self.split)[: self.num_examples]
        collate = PromptCollator(pl_module.tokenizer.pad_token_id)
        answers: list[str] = []
        for start in range(0, len(examples), self.batch_size):
            batch = collate(examples[start : start + self.batch_size])
            answers += pl_module.generate(
                batch["input_ids"].to(pl_module.device),
                batch["attention_mask"].to(pl_module.device),
                max_new_tokens=self.max_new_tokens,
            )
        return answers, [example.reference for example in examples]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.before, _ = self._generate(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        after, references = self._generate(trainer, pl_module)
        report = summarize(self.before, after, references)
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "generation_preview.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
            rank_zero_info(format_report(report, self.num_printed))


def exact_match(answer: str, reference: str) -> bool:
    """Whether an answer equals the reference, ignoring surrounding whitespace."""
    return answer.strip() == reference.strip()


def summarize(before: list[str], after: list[str], references: list[str]) -> dict[str, Any]:
    """Exact-match rates and the per-example answers."""
    n = max(1, len(references))
    return {
        "exact_match_before": sum(map(exact_match, before, references)) / n,
        "exact_match_after": sum(map(exact_match, after, references)) / n,
        "examples": [{"reference": r, "before": b, "after": a} for b, a, r in zip(before, after, references)],
    }


def format_report(report: dict[str, Any], num_printed: int) -> str:
    """Human-readable before/after table."""
    lines = ["", "lit_lora: answers on held-out prompts (greedy)"]
    for i, example in enumerate(report["examples"][:num_printed]):
        lines += [
            f"  [{i}] reference: {example['reference']!r}",
            f"      before:    {example['before']!r}",
            f"      after:     {example['after']!r}",
        ]
    lines.append(
        f"  exact match on {len(report['examples'])} prompts: "
        f"before {report['exact_match_before']:.0%}, after {report['exact_match_after']:.0%}"
    )
    return "\n".join(lines)
