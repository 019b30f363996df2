"""The LightningModule: a PEFT LoRA adapter on a (quantized) Hugging Face causal LM."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from torchmetrics.aggregation import MeanMetric
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from lit_lora.artifacts.adapter_dir import check_adapter_dir
from lit_lora.artifacts.source import check_model_source
from lit_lora.artifacts.tokenizer import load_tokenizer, tokenizer_source
from lit_lora.errors import ConfigError
from lit_lora.model.checkpoint import check_adapter_shapes, trainable_shapes, trained_state
from lit_lora.model.generation import end_token_ids, generate_texts
from lit_lora.model.loading import base_model_folder, load_base_model
from lit_lora.model.lora import LoRASettings
from lit_lora.model.loss import head_loss_sum, token_loss_sum
from lit_lora.model.quantization import QuantizationSettings
from lit_lora.model.replay import (
    ReplayQueue,
    adapted_base_layers,
    allows_selective,
    use_replay_dropout,
    use_replay_linears,
)
from lit_lora.training.heap import trim_before_layers
from lit_lora.training.optim import (
    LRSchedule,
    apply_configured_settings,
    configured_settings,
    default_optimizer,
    parameter_groups,
    resync_learning_rates,
    scale_group_learning_rates,
)
from lit_lora.training.planning import check_memory
from lit_lora.training.rng import rng_states, set_rng_states

# Checkpoints store the constructor's settings as hyperparameters; allow these
# dataclasses through torch.load's default weights-only unpickler.
torch.serialization.add_safe_globals([QuantizationSettings, LoRASettings, LRSchedule])


class LoRAModule(LightningModule):
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
        model_name_or_path: Base model: a local folder, a hub id (when online), or the
            folder holding ``gguf_file``.
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
            ``auto`` takes the fastest of ``false``, ``selective`` and ``true`` that
            the memory estimate says fits (or fits the larger micro-batch with
            ``data.batch_size: auto``). On CPU, ``true`` also hands freed heap pages
            back to the system before each layer (``lit_lora.training.heap``).
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
            ``eager``, ``flash_attention_2``); null lets transformers choose.
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
    # The eval metrics shown on the progress bar as well as logged.
    eval_prog_bar: ClassVar[tuple[str, ...]] = ("loss", "perplexity")

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
        check_model_source(model_name_or_path, gguf_file)
        if tokenizer_name_or_path is not None:
            check_model_source(tokenizer_name_or_path, field="model.tokenizer_name_or_path")
        if random_init and gguf_file is not None:
            raise ConfigError("model.random_init: a GGUF file holds weights; set random_init: false or drop gguf_file.")
        if adapter_path is not None:
            check_adapter_dir(adapter_path, "model.adapter_path")
        if gradient_checkpointing == "selective" and quantization.mode == "int8":
            raise ConfigError(
                "model.gradient_checkpointing: selective keeps the outputs of 4-bit or unquantized base layers, "
                "not of 8-bit ones; set quantization.mode: nf4, or gradient_checkpointing: true."
            )
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
        self._window: dict[str, Any] = {}
        # RNG states of a checkpoint being resumed, set back just before its next batch.
        self._rng_to_restore: dict[str, Any] | None = None
        # What checkpoint recomputation replays (dropout masks on CPU, selective's
        # base outputs): reset before each micro-batch.
        self._replays: list[ReplayQueue] = []
        # Whether the loss may apply the output head itself; probed at the first loss.
        self._separable_head: bool | None = None

    # ------------------------------------------------------------------ building
    def configure_model(self) -> None:
        """Build tokenizer, base model and adapter once, on the device of this process."""
        if self.model is not None:
            return
        self.tokenizer = load_tokenizer(
            *tokenizer_source(self.model_name_or_path, self.gguf_file, self.tokenizer_name_or_path)
        )
        self.model = self.apply_adapter(self.build_base_model())
        trainable, total = self.model.get_nb_trainable_parameters()
        rank_zero_info(f"lit_lora: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.4f}%)")
        # Selective checkpointing keeps what the frozen layers under the adapters produce.
        selective = allows_selective(self.model)
        if self.gradient_checkpointing == "selective" and not selective:
            raise ConfigError(
                "model.gradient_checkpointing: selective needs every adapted base layer frozen (lora.bias: none) "
                "and 4-bit or unquantized; set gradient_checkpointing: true."
            )
        checkpointing = self.gradient_checkpointing if self.gradient_checkpointing != "auto" else False
        if self._trainer is not None:
            _, checkpointing = check_memory(
                self.trainer,
                self.model,
                self.quantization,
                self.gradient_checkpointing,
                self.optimizer_factory,
                selective,
            )
        if self._trainer is not None and str(self.trainer.precision).endswith("-mixed"):
            self.skip_adapter_input_casts()
        cpu = next(self.model.parameters()).device.type == "cpu"
        if cpu:
            # LoRA dropout masks drawn faster, and replayed by checkpointing's recomputation.
            self._replays = use_replay_dropout(self.model, replay=bool(checkpointing))
        if checkpointing:
            # Non-reentrant checkpointing propagates gradients to the adapters of a
            # frozen base without forcing the input embeddings to require grad.
            base = self.model.get_base_model()
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
            if cpu and checkpointing is True:
                # Full checkpointing is the choice for memory: give freed heap pages
                # back at some cost in time (lit_lora.training.heap).
                trim_before_layers(m for m in base.modules() if isinstance(m, GradientCheckpointingLayer))
            if checkpointing == "selective":
                self._replays += use_replay_linears(adapted_base_layers(self.model))
        device = next(self.model.parameters()).device
        for split in ("val", "test"):
            self.split_metrics[split] = self.build_eval_metrics().to(device)

    def skip_adapter_input_casts(self) -> None:
        """Let adapter inputs keep their autocast dtype instead of PEFT's cast to float32.

        Under autocast the next matmul casts them back: a float32 copy of every adapter
        input and of its dropout for nothing (measured in ``docs/benchmarks.md``).
        Only for mixed precision: without autocast the cast is what makes the dtypes match.
        """
        for layer in self.model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.cast_input_dtype_enabled = False

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
        if self.quantization.quantized:
            # Casts the remaining non-quantized weights (norms, embeddings) to float32 for
            # stable training and freezes everything.
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        if self.adapter_path is not None:
            model = PeftModel.from_pretrained(base, self.adapter_path, is_trainable=True)
            config = model.peft_config["default"]
            rank_zero_info(
                f"lit_lora: starting from the adapter in {self.adapter_path} (r={config.r}, "
                f"alpha={config.lora_alpha}, targets={sorted(config.target_modules)}); model.lora is not used"
            )
        else:
            model = get_peft_model(base, self.lora.to_peft_config(self.peft_task_type))
            # Record what the user named, not the cache folder a GGUF or random model loads from.
            model.peft_config["default"].base_model_name_or_path = self.model_name_or_path
        # from_pretrained returns a model in eval mode, and Lightning keeps the modes it
        # finds: without this, LoRA dropout would silently stay off during training.
        model.train()
        return model

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
        return self.model(**self._model_inputs(input_ids, attention_mask, position_ids)).logits

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
        return decoder(**self._model_inputs(input_ids, attention_mask, position_ids)).last_hidden_state

    def _model_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        if position_ids is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        if input_ids.size(0) > 1 and self.model.config._attn_implementation.startswith("flash"):
            # transformers' flash path isolates packed examples only in its padding-free
            # mode, one row per batch; several rows would attend across examples.
            raise ConfigError(
                "data.packing with model.attn_implementation flash_attention_2 needs data.batch_size: 1 "
                "(one packed row per batch; raise data.max_length instead), or use attn_implementation sdpa."
            )
        # transformers derives the packed-sequence mask from position_ids only without a
        # KV cache, and a model may have use_cache on in its config.
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": False,
        }

    def head_is_separable(self) -> bool:
        """Whether the loss may apply the output head itself, to the positions it scores.

        Probed once (see :meth:`_head_is_separable`) and remembered.
        """
        if self._separable_head is None:
            self._separable_head = self._head_is_separable()
        return self._separable_head

    def _head_is_separable(self) -> bool:
        """Whether the logits are the output head applied to :meth:`hidden_states`.

        True for most causal LMs; not for those that scale or soft-cap their logits
        (Gemma 2, Cohere) or whose decoder is not found. Checked once, on a probe.
        """
        probe = torch.arange(1, 9, device=self.device).unsqueeze(0) % self.model.config.vocab_size
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                expected = self.model(input_ids=probe).logits.float()
                found = self.model.get_output_embeddings()(self.hidden_states(probe)).float()
            return found.shape == expected.shape and torch.allclose(found, expected, rtol=1e-3, atol=1e-3)
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return False
        finally:
            self.model.train(training)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss of a micro-batch and the count it is normalised by.

        The output head scores only the supervised positions (see
        ``lit_lora.model.loss.head_loss_sum``) when the model allows it.

        Args:
            batch: ``input_ids`` and ``labels``, each ``(B, T)``, with ``attention_mask``
                (padded batches) or ``position_ids`` (packed batches).

        Returns:
            ``(loss_sum, count)``; here summed token cross-entropy and supervised tokens.
        """
        inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"))
        if self.head_is_separable():
            return head_loss_sum(self.hidden_states(*inputs), self.model.get_output_embeddings(), batch["labels"])
        return token_loss_sum(self(*inputs), batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss_sum, count = self.compute_loss(batch)
        window = self._window
        window["loss"] = window.get("loss", 0.0) + loss_sum.detach()
        window["count"] = window.get("count", 0) + count
        window.setdefault("start", time.perf_counter())
        # Lightning divides what we return by accumulate_grad_batches before backward;
        # multiply it back so the gradients stay plain sums, normalised at the step.
        return loss_sum * self.trainer.accumulate_grad_batches

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the summed gradients into the gradient of the step's mean token loss.

        Runs after the last micro-batch's backward (and after AMP unscaling), before
        gradient clipping, so clipping and the logged norm see the true gradient.
        """
        window, self._window = self._window, {}
        strategy = self.trainer.strategy
        # One all-reduce for both sums: (loss sum, supervised tokens) over all devices.
        loss_sum, count = strategy.reduce(torch.stack([window["loss"], window["count"].float()]), reduce_op="sum")
        count = count.clamp(min=1)
        loss = loss_sum / count
        # Data-parallel strategies average gradients over devices, hence world_size.
        scale = self.trainer.world_size / count
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        torch._foreach_mul_(grads, scale)
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        seconds = time.perf_counter() - window["start"]
        # On the progress bar too (lit_lora.callbacks.progress shortens the names).
        self.log_dict(
            {
                "train/loss": loss,
                "train/lr": torch.tensor(optimizer.param_groups[0]["lr"]),
                f"train/{self.count_unit}_per_sec": count / seconds,
            },
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        self.log("train/grad_norm", grad_norm, on_step=True, on_epoch=False, batch_size=1)

    # Lightning's evaluation hooks, shared by every task: they call the public eval hooks below.
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.log_eval_metrics("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
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
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError(
                "trainer: the run has no end; set trainer.max_epochs or trainer.max_steps so the schedule "
                "knows its length."
            )
        scheduler = self.scheduler.build(optimizer, int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # ``configure_optimizers`` asks for ``estimated_stepping_batches``, which makes
        # Lightning set up the training dataloader before it restores a checkpoint, and
        # then it never hands the saved position back to it: a mid-epoch resume would
        # restart the epoch. Hand it back now, before the first batch is drawn (a no-op
        # when Lightning has done so, or when not resuming mid-epoch).
        self.trainer.fit_loop._load_combined_loader_states()
        scheduler = self.lr_schedulers()
        if self.trainer.ckpt_path is not None:
            changes = apply_configured_settings(self.trainer.optimizers[0], self._configured_groups, scheduler)
            if changes:
                rank_zero_info(
                    "lit_lora: resuming with this config's optimizer settings, not the checkpoint's: "
                    f"{', '.join(sorted(changes))}"
                )
        # After a restore, the schedule may cover a longer run than the one saved.
        if scheduler is not None:
            resync_learning_rates(scheduler)

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
        # next step's dropout starts from. Every device seeds alike (seed_everything),
        # so process 0's states, the ones saved, are every process's.
        checkpoint["rng_states"] = rng_states()

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
        self._rng_to_restore = checkpoint.get("rng_states")
        found = {name: value.shape for name, value in checkpoint["state_dict"].items()}
        check_adapter_shapes(trainable_shapes(self), found)

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the PEFT adapter and the tokenizer, loadable with ``PeftModel.from_pretrained``."""
        directory = Path(directory)
        # lit_lora never resizes the vocabulary, so the base embeddings need no copy;
        # PEFT's "auto" would look the base config up, on the hub when it is not local.
        # Only the trained adapter: a subclass may hold frozen ones too (DPO's reference).
        self.model.save_pretrained(directory, save_embedding_layers=False, selected_adapters=["default"])
        self.tokenizer.save_pretrained(directory)
        return directory
