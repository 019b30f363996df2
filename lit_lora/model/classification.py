"""Sequence classification: LoRA on ``AutoModelForSequenceClassification`` with a fully trained head."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from lit_lora.errors import ConfigError
from lit_lora.model.base import LoRAModule
from lit_lora.model.loading import base_model_folder, load_base_model

if TYPE_CHECKING:
    from lit_lora.data.classification import ClassificationDataModule

# Written next to the adapter: the class names in id order.
LABELS_FILE = "labels.json"
# What transformers names the classification head of its ...ForSequenceClassification
# models (``score`` for decoder LMs); PEFT trains these in full under SEQ_CLS.
HEAD_NAMES = ("score", "classifier")


def read_adapter_labels(adapter_path: str | Path) -> list[str] | None:
    """The class names saved with a classification adapter, or ``None`` when it has none."""
    path = Path(adapter_path) / LABELS_FILE
    return json.loads(path.read_text())["labels"] if path.is_file() else None


class ClassificationModule(LoRAModule):
    """Trains a LoRA adapter and a new classification head on a (quantized) decoder LM.

    The base is loaded as ``AutoModelForSequenceClassification``: the model reads the
    text and its head scores the classes from the last token's hidden state. LoRA
    adapts the layers (``lora.target_modules``) and the head, new and randomly
    initialised, trains in full (PEFT's ``SEQ_CLS`` task puts it in
    ``modules_to_save``; bitsandbytes leaves it unquantized). The classes come from
    the data module (``data.labels`` or its training file) and are saved with the
    adapter as ``labels.json``.

    The loss is cross-entropy over the rows of an optimizer step, with the data
    module's ``class_weights`` when set: summed over rows, then divided by the rows.
    Validation and test log ``loss``, ``accuracy``, ``f1_macro`` and ``f1/<label>``
    per class; ``predict`` writes each text's label and class probabilities.

    Use with :class:`lit_lora.data.ClassificationDataModule`. Every ``LoRAModule``
    setting applies; ``embedding_lr_ratio`` does not touch the head, which trains at
    the full learning rate.
    """

    peft_task_type: ClassVar[str] = "SEQ_CLS"
    count_unit: ClassVar[str] = "examples"
    eval_prog_bar: ClassVar[tuple[str, ...]] = ("accuracy",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_names: list[str] | None = None
        self.class_weights: torch.Tensor | None = None

    # ------------------------------------------------------------------ building
    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self._trainer is None and self.label_names is None and self.adapter_path is None:
            # load_from_checkpoint builds the model before it hands over the checkpoint,
            # which names the labels: on_load_checkpoint builds it then.
            return
        self.label_names = self._resolve_labels()
        data = self._classification_data()
        if data is not None:
            self.class_weights = data.loss_weights()
        super().configure_model()

    def _classification_data(self) -> ClassificationDataModule | None:
        """The trainer's data module when it is a ``ClassificationDataModule`` (the source of labels and weights)."""
        # Imported here: loading a trained classifier need not import the data package and `datasets`.
        from lit_lora.data.classification import ClassificationDataModule

        data = self.trainer.datamodule if self._trainer is not None else None
        return data if isinstance(data, ClassificationDataModule) else None

    def _resolve_labels(self) -> list[str]:
        """The class names: a loaded checkpoint's or the adapter's when starting from one, else the data module's."""
        data = self._classification_data()
        from_adapter = read_adapter_labels(self.adapter_path) if self.adapter_path else self.label_names
        from_data = None
        # Classifying with an adapter needs no training file: its labels.json names the classes.
        if data is not None and (data.labels is not None or data.train_file is not None):
            from_data = data.label_names()
        if from_adapter is not None and from_data is not None and from_adapter != from_data:
            source = f"model.adapter_path '{self.adapter_path}'" if self.adapter_path else "the checkpoint"
            raise ConfigError(
                f"data.labels: the data's labels {from_data} differ from those {source} was trained with, "
                f"{from_adapter}. Fix: set data.labels: {from_adapter}."
            )
        labels = from_adapter or from_data
        if labels is None:
            raise ConfigError(
                "The classifier has no labels: use lit_lora.data.ClassificationDataModule (which reads them from "
                "data.train_file or data.labels), or start from a classification adapter (model.adapter_path)."
            )
        return labels

    def build_base_model(self) -> PreTrainedModel:
        """The base as ``AutoModelForSequenceClassification``, with one output per label."""
        folder = base_model_folder(self.model_name_or_path, self.gguf_file, self.random_init, self.seed)
        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        names = self.label_names
        model = load_base_model(
            folder,
            self.quantization,
            device,
            self.attn_implementation,
            model_class=AutoModelForSequenceClassification,
            keep_unquantized=HEAD_NAMES,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: index for index, name in enumerate(names)},
            # The head reads the last token that is not padding; the model finds it by this id.
            pad_token_id=self.tokenizer.pad_token_id,
        )
        rank_zero_info(f"lit_lora: classifying into {len(names)} labels: {names}")
        return model

    # ------------------------------------------------------------------ objective
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, C)`` class scores of a batch (``input_ids`` and ``attention_mask``, ``(B, T)``)."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed (class-weighted) cross-entropy of ``(B, C)`` scores against ``(B,)`` class ids."""
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, labels, weight=weight, reduction="sum")

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy of the batch and its number of rows."""
        labels = batch["labels"]
        return self.loss_sum(self.logits(batch), labels), torch.tensor(labels.numel(), device=labels.device)

    def chance_loss(self) -> float:
        """``ln(classes)``: the loss of guessing every class alike."""
        return math.log(len(self.label_names))

    # ------------------------------------------------------------------ evaluation
    def build_eval_metrics(self) -> torch.nn.ModuleDict:
        """The loss, and accuracy, macro F1 and per-class F1 over the labels."""
        classes = len(self.label_names)
        scores = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(classes, average="micro"),
                "f1_macro": MulticlassF1Score(classes, average="macro"),
                "f1": MulticlassF1Score(classes, average="none"),
            }
        )
        return torch.nn.ModuleDict({"loss": MeanMetric(), "scores": scores})

    def eval_step(self, split: Literal["val", "test"], batch: dict[str, torch.Tensor]) -> None:
        """Update the loss and the class scores with one batch's logits."""
        metrics = self.split_metrics[split]
        logits, labels = self.logits(batch), batch["labels"]
        metrics["loss"].update(self.loss_sum(logits, labels) / labels.numel(), labels.numel())
        metrics["scores"].update(logits, labels)

    def eval_metrics(self, split: Literal["val", "test"]) -> dict[str, torch.Tensor]:
        """``loss``, ``accuracy``, ``f1_macro`` and ``f1/<label>`` for each label."""
        metrics = self.split_metrics[split]
        values = {"loss": metrics["loss"].compute()}
        for name, value in metrics["scores"].compute().items():
            if value.ndim == 0:
                values[name] = value
            else:  # per-class F1, one entry per label
                values.update({f"{name}/{label}": v for label, v in zip(self.label_names, value)})
        return values

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Each text's predicted label and the probability of every label."""
        data = self.trainer.datamodule
        texts, references = data.texts("predict"), data.references("predict")
        probabilities = self.logits(batch).softmax(-1).tolist()
        rows = []
        for index, row in zip(batch["index"].tolist(), probabilities):
            best = max(range(len(row)), key=row.__getitem__)
            rows.append(
                {
                    "text": texts[index],
                    "prediction": self.label_names[best],
                    "probabilities": {name: round(p, 6) for name, p in zip(self.label_names, row)},
                    "reference": references[index],
                }
            )
        return rows

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["label_names"] = self.label_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the checkpoint's labels, or refuse it when the data's labels differ."""
        saved = checkpoint.get("label_names")
        if self.label_names is None:
            self.label_names = saved  # load_from_checkpoint: no data module to read them from
        elif saved is not None and saved != self.label_names:
            raise ConfigError(
                f"data.labels: the data's labels {self.label_names} differ from the checkpoint's {saved}. "
                f"Fix: set data.labels: {saved}."
            )
        super().on_load_checkpoint(checkpoint)

    def save_adapter(self, directory: str | Path) -> Path:
        """The PEFT adapter (LoRA and the head), the tokenizer, and ``labels.json``."""
        directory = super().save_adapter(directory)
        (directory / LABELS_FILE).write_text(json.dumps({"labels": self.label_names}, indent=2) + "\n")
        return directory
