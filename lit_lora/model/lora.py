"""LoRA adapter settings, turned into a PEFT ``LoraConfig``, and the trainable PEFT model built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LoRASettings:
    """Shape and placement of the LoRA adapters (defaults: the reference cheat sheet).

    Args:
        r: Rank of each update ``B @ A``. 16 suits instruction tuning; raise it when
            the model underfits, lower it when it overfits.
        alpha: Scale numerator: the update is multiplied by ``alpha / r`` (or
            ``alpha / sqrt(r)`` with ``use_rslora``). Keep it at ``2 * r`` and tune
            the learning rate instead.
        dropout: Dropout on the adapter's input; 0.05 for small and mid-sized data,
            0.0 for very large data sets.
        target_modules: Modules that get adapters: ``all-linear`` (every linear layer
            but the output head: the best quality per parameter), or a list of module
            names such as ``[q_proj, k_proj, v_proj, o_proj]``.
        bias: Which biases to train: ``none``, ``all`` or ``lora_only``.
        layers_to_transform: Indices of the transformer blocks that get adapters;
            null for all of them.
        modules_to_save: Modules trained in full and saved with the adapter, e.g.
            ``[embed_tokens, lm_head]`` after adding tokens; they get the module's
            ``embedding_lr_ratio``.
        use_dora: Weight-decomposed LoRA (DoRA): learns magnitude and direction
            separately; usually better at low rank, slower per step.
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)``, which keeps
            high-rank adapters learning.
        init_lora_weights: Initialisation: ``true`` (A random, B zero, so training
            starts exactly at the base model), ``gaussian``, ``pissa``, ``olora``,
            ``loftq``, ``orthogonal``..., or ``false`` (both random; for tests only).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    layers_to_transform: list[int] | None = None
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    use_rslora: bool = False
    init_lora_weights: bool | str = True

    def to_peft_config(self, task_type: str = "CAUSAL_LM") -> LoraConfig:
        """The PEFT ``LoraConfig``.

        Args:
            task_type: PEFT's task: ``CAUSAL_LM``, or ``SEQ_CLS`` (which also trains the
                classification head in full).
        """
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias,
            layers_to_transform=self.layers_to_transform,
            modules_to_save=self.modules_to_save,
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            init_lora_weights=self.init_lora_weights,
            task_type=task_type,
        )


def trainable_adapter(
    base: PreTrainedModel,
    settings: LoRASettings,
    task_type: str,
    base_name: str,
    quantized: bool,
    adapter_path: str | None = None,
) -> PeftModel:
    """Prepare a frozen base for training and wrap it with a new LoRA adapter, or with ``adapter_path``'s.

    Gradient checkpointing is not switched on here (``lit_lora.model.gradient_checkpointing``
    does that once the memory plan has decided on it).

    Args:
        base: The loaded base model.
        settings: The new adapter's shape; unused with ``adapter_path``, whose
            ``adapter_config.json`` decides it.
        task_type: PEFT's task (``CAUSAL_LM``, ``SEQ_CLS``).
        base_name: The base as the user named it, recorded in the adapter's config.
        quantized: Whether ``base`` holds bitsandbytes-quantized weights.
        adapter_path: An adapter folder to continue training, or ``None`` for a new adapter.
    """
    if quantized:
        # Casts the remaining non-quantized weights (norms, embeddings) to float32 for
        # stable training and freezes everything.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if adapter_path is not None:
        model = PeftModel.from_pretrained(base, adapter_path, is_trainable=True)
        config = model.peft_config["default"]
        rank_zero_info(
            f"lit_lora: starting from the adapter in {adapter_path} (r={config.r}, "
            f"alpha={config.lora_alpha}, targets={sorted(config.target_modules)}); model.lora is not used"
        )
    else:
        model = get_peft_model(base, settings.to_peft_config(task_type))
        # Record what the user named, not the cache folder a GGUF or random model loads from.
        model.peft_config["default"].base_model_name_or_path = base_name
    # from_pretrained returns a model in eval mode, and Lightning keeps the modes it
    # finds: without this, LoRA dropout would silently stay off during training.
    model.train()
    return model
