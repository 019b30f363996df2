"""oneDNN's primitive cache in a CPU process: bounded, so that batches of many lengths do not grow its memory.

Under CPU autocast (bfloat16) PyTorch runs each matmul through a oneDNN primitive
built for its exact shape, and keeps the built primitive in a cache of 1,024 entries.
A decoder's matmuls take ``M = batch x length`` rows, so every new padded length
builds another set of about 25 primitives (forward and backward of each layer
shape), a few hundred kB each, held in the heap until the cache is full. Batches of
45 to 80 tokens on SmolLM2-135M grew the live heap by about 5 MiB a step over an
epoch and the peak RSS by 260 MiB; at one fixed length, or in float32 (which does
not go through oneDNN), it stayed flat (``docs/benchmarks.md``). A cache of
:data:`PRIMITIVE_CACHE_CAPACITY` entries holds what a step reuses (the layers share
their shapes) and builds the rest again, which cost no measurable time.

oneDNN reads the capacity from the environment once, when it builds its first
primitive, so :func:`bound_primitive_cache` works from inside the process as long as
it runs before the first matmul: ``python -m lit_lora`` calls it before importing
torch. A program that trains through the Python API can call it first, or set the
variable itself.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# oneDNN's environment variable for the number of primitives its cache keeps.
PRIMITIVE_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# Entries kept: several lengths' worth of a decoder's matmul shapes (a step split into
# sub-batches of different lengths reuses each of them within the step).
PRIMITIVE_CACHE_CAPACITY = 128


def bound_primitive_cache(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set oneDNN's primitive cache to :data:`PRIMITIVE_CACHE_CAPACITY` entries, unless it is set already.

    Args:
        environ: The environment to set it in (this process's by default); a value
            already there, such as the user's own, is kept.
    """
    environ.setdefault(PRIMITIVE_CACHE_VARIABLE, str(PRIMITIVE_CACHE_CAPACITY))
