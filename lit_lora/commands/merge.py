"""``python -m lit_lora merge``: fold a LoRA adapter into its base model's weights.

The result is a plain Hugging Face model folder (sharded safetensors, config,
generation config, tokenizer) that ``AutoModelForCausalLM.from_pretrained``, vLLM
or a GGUF converter read without PEFT. The merge always goes into the base's
full-precision weights, on the CPU, so it works for models larger than the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from huggingface_hub import split_torch_state_dict_into_shards
from transformers import AutoConfig

from lit_lora.artifacts.adapter_dir import check_adapter_dir, trained_quantization
from lit_lora.artifacts.tokenizer import load_tokenizer
from lit_lora.errors import ConfigError
from lit_lora.model.pretrained import resolve_trained_model, shared_option_docs


@shared_option_docs
def merge(
    adapter: str,
    output: str,
    base: str | None = None,
    gguf_file: str | None = None,
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
    max_shard_size: str = "5GB",
) -> Path:
    """Merge a trained LoRA adapter into its base model and save the full model.

    The base is loaded once, unquantized, in ``dtype``; the adapter's update
    ``B @ A * alpha / r`` is added to each weight in place, one layer at a time, so
    memory holds one copy of the model plus one layer. An adapter trained on a
    4-bit or 8-bit base (QLoRA) is merged into the full-precision weights, never
    into quantized ones, and a note says so: the merged model then differs slightly
    from the quantized base plus adapter that training and validation saw.

    Args:
        adapter: Adapter folder written by ``fit`` (``<default_root_dir>/adapter``)
            or any PEFT LoRA adapter folder.
        output: Folder to write the merged model to; created if missing, and it
            must be empty so that no existing file is overwritten.
        base: {base} It must hold full-precision weights, not a pre-quantized checkpoint.
        gguf_file: {gguf_file}
        dtype: dtype of the merged weights: ``bfloat16`` (half the size of
            float32, safe range), ``float16`` (for hardware without bf16), or
            ``float32`` (exact, twice the size).
        max_shard_size: Largest safetensors file, e.g. ``5GB`` or ``500MB``;
            bigger models are split into shards with an index file.

    Returns:
        The output folder.
    """
    adapter_dir = check_adapter_dir(adapter, "--adapter")
    output_dir = Path(output).expanduser()
    check_output_dir(output_dir)
    check_shard_size(max_shard_size)
    # On the CPU, so that models larger than the GPU merge too.
    trained = resolve_trained_model([adapter_dir], base, gguf_file, quantized=False, device="cpu", compute_dtype=dtype)
    check_full_precision(trained.spec.folder())

    trained_as = trained_quantization(adapter_dir)
    if trained_as.quantized:
        print(
            "lit_lora: note: the adapter was trained on the base quantized to "
            f"{trained_as.mode}; it is merged into the full-precision {dtype} weights, so "
            "the merged model differs slightly from the quantized base + adapter that "
            "training and validation measured. Evaluate the merged model."
        )

    tokenizer = load_tokenizer(*trained.tokenizer_source())
    # In place: each weight gets its update added where it lies, so no layer is
    # copied (PEFT's safe_merge clones each one, and freed clones stay in the
    # allocator: +200 MB resident on a 135M model). Tied weights stay one tensor.
    merged = trained.load().merge_and_unload()
    merged.save_pretrained(output_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(output_dir)
    print(f"lit_lora: merged model written to {output_dir}")
    return output_dir


def check_output_dir(path: Path) -> None:
    """Fail when ``path`` is a file or a folder with anything in it."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"--output: '{path}' already exists and is not an empty folder; merge "
            "never overwrites files. Pass a new folder (it is created) or an empty one."
        )


def check_shard_size(max_shard_size: str) -> None:
    """Fail before loading the model when ``max_shard_size`` is no size."""
    try:
        # The parser save_pretrained uses; an empty state dict makes it only parse.
        split_torch_state_dict_into_shards({}, max_shard_size=max_shard_size)
    except ValueError as error:
        raise ConfigError(f"--max_shard_size: {error} Write a size such as '5GB' or '500MB'.") from None


def check_full_precision(folder: str) -> None:
    """Fail when the base checkpoint itself is quantized (e.g. a ``*-bnb-4bit`` model).

    Loading it would give quantized weights, which PEFT dequantizes, updates and
    quantizes again; the merge needs the full-precision checkpoint instead.
    """
    quantization = AutoConfig.from_pretrained(folder).to_dict().get("quantization_config")
    if quantization is not None:
        method = quantization.get("quant_method")
        raise ConfigError(
            f"--base: '{folder}' holds {method}-quantized weights, and merging into "
            "them rounds much of the adapter's update away. Pass --base with the "
            "full-precision model (the one the quantized checkpoint was made from)."
        )
