"""The attention kernel each batch runs with: eager attention for short rows on CPU.

On CPU, PyTorch's SDPA (a flash-attention kernel that never materialises the
``T x T`` probabilities) is slower than transformers' eager attention (two batched
matmuls and a softmax) while the rows are short, and faster once they are long.
Forward and backward of a SmolLM2-shaped decoder under bfloat16 autocast, 8 rows,
took 0.79 of SDPA's time with eager attention at 48 tokens, 0.91 at 128, 0.99 at
192, 1.06 at 256 and 1.48 at 512 (``docs/benchmarks.md``). So a model whose
``attn_implementation`` the user left unset, and that transformers gave SDPA, runs a
micro-batch of rows up to :data:`EAGER_MAX_LENGTH` tokens with eager attention on
CPU, and longer ones with SDPA. A kernel the user chose is always kept, and on a
GPU nothing switches.

The choice is made once per micro-batch, from its padded length, before its
forward: a micro-batch run as sub-batches of different lengths
(``lit_lora.model.length_split``) keeps one kernel, which gradient checkpointing's
recomputation, run in the backward pass after every sub-batch's forward, must find
again. Both kernels compute the same attention (tests compare them).
"""

from __future__ import annotations

from torch import nn

# Longest padded row (tokens) that runs with eager attention on CPU.
EAGER_MAX_LENGTH = 128


def attention_for_length(length: int, configured: str | None, default: str, device_type: str) -> str:
    """The attention implementation a micro-batch of ``length``-token rows runs with.

    Args:
        length: Padded length of the micro-batch's rows.
        configured: ``model.attn_implementation`` as the user set it (None: unset).
        default: The implementation the model was loaded with (``sdpa`` where
            transformers chose it).
        device_type: Where the model runs (``cpu``, ``cuda``).
    """
    if configured is None and default == "sdpa" and device_type == "cpu" and length <= EAGER_MAX_LENGTH:
        return "eager"
    return default


class AttentionByLength:
    """Sets a loaded model's attention implementation for each micro-batch (:func:`attention_for_length`).

    Args:
        model: The loaded model, on its device; its current implementation is the default.
        configured: ``model.attn_implementation`` as the user set it (None: unset).
    """

    def __init__(self, model: nn.Module, configured: str | None) -> None:
        self.config = model.config
        self.default: str = model.config._attn_implementation
        self.configured = configured
        self.device_type = next(model.parameters()).device.type

    def implementation(self, length: int) -> str:
        """The implementation rows of ``length`` tokens run with."""
        return attention_for_length(length, self.configured, self.default, self.device_type)

    def select(self, length: int) -> None:
        """Run the next forward passes, until the next call, with :meth:`implementation` of ``length``."""
        self.config._attn_implementation = self.implementation(length)
