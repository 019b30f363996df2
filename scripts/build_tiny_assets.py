"""Build ``assets/tiny-llama/``: the config and tokenizer of a tiny Llama-style test model.

Tests build a random-initialised model from these files offline, in well under a
second, instead of loading real weights. The folder holds no weights on purpose::

    config = AutoConfig.from_pretrained("assets/tiny-llama")
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained("assets/tiny-llama")

The tokenizer is a byte-level BPE (any text encodes, there is no unknown token)
trained here on the quickstart training data, so it splits the project's own chat
data into realistic, multi-token sequences. It has no pad token, like many real base
models, so tests see the code path that has to supply one. Both the chat template and
the tokenizer's post-processor put ``<s>`` first, so text already rendered with the
template must be encoded with ``add_special_tokens=False``, as for Llama 3.

Regenerate the committed files (byte-identical: BPE training is deterministic) with::

    python scripts/make_quickstart_data.py   # only if data/quickstart/ changed
    python scripts/build_tiny_assets.py
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parent.parent
VOCAB_SIZE = 512
BOS, IM_START, IM_END = "<s>", "<|im_start|>", "<|im_end|>"
# Order fixes the ids: <s> = 0, <|im_start|> = 1, <|im_end|> = 2.
SPECIAL_TOKENS = [BOS, IM_START, IM_END]

# ChatML, as SmolLM2 and Qwen use it, behind an explicit BOS. Unlike SmolLM2's template
# it adds no default system prompt, which keeps test sequences short.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_texts(train_file: Path) -> Iterator[str]:
    """Yield the text the BPE is trained on: every quickstart training message after its role.

    The special tokens are left out: they are whole tokens already, and left in, the
    byte-level pre-tokenizer would split them and spend merges on their pieces.
    """
    with train_file.open(encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                yield f"{message['role']}\n{message['content']}\n"


def build_tokenizer(train_file: Path) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE and wrap it for transformers."""
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: the chat template puts text right after "\n", and a prefix space
    # would make the first word of every message tokenize unlike the same word inside it.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes are in the vocabulary even if the corpus lacks some, so no text is unencodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts(train_file), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            # Keep offsets on the raw bytes (a space belongs to the token after it), as Llama 3 does.
            processors.ByteLevel(add_prefix_space=False, trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=IM_END,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A two-layer Llama with grouped-query attention, sized so a forward pass takes milliseconds."""
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def main() -> None:
    """Write the tokenizer and config files into the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--train-file", type=Path, default=REPO / "data" / "quickstart" / "train.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "tiny-llama")
    args = parser.parse_args()
    tokenizer = build_tokenizer(args.train_file)
    # Keep the chat template inside tokenizer_config.json rather than transformers 5's
    # separate chat_template.jinja, so the whole tokenizer setup reads in one file.
    tokenizer.save_pretrained(args.out, save_jinja_files=False)
    build_config(tokenizer).save_pretrained(args.out)
    print(f"wrote {sorted(p.name for p in args.out.iterdir())} to {args.out} (vocab {len(tokenizer)})")


if __name__ == "__main__":
    main()
