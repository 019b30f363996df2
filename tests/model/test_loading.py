"""Loading the base model: what a quantized CPU load keeps resident."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lit_lora.model.loading import load_base_model, random_weights_folder
from lit_lora.model.quantization import QuantizationSettings


def mapped_ranges(file: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of ``file`` (Linux's /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]) == file:
            low, high = (int(address, 16) for address in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("mode", ["nf4", "none"])
def test_a_quantized_cpu_load_keeps_no_tensor_in_the_checkpoint_mapping(tiny_model_dir, mode):
    folder = random_weights_folder(str(tiny_model_dir), seed=0)
    checkpoint = (folder / "model.safetensors").resolve()
    # Loading in the checkpoint's own dtype is what lets transformers hand out views of the file.
    with safe_open(checkpoint, framework="pt") as file:
        names = file.keys()  # a safe_open handle is not iterable
        assert {file.get_slice(name).get_dtype() for name in names} == {"F32"}
    quantization = QuantizationSettings(mode=mode, compute_dtype="float32")
    model = load_base_model(str(folder), quantization, torch.device("cpu"))
    tensors = [*model.parameters(), *model.buffers()]
    addresses = [t.untyped_storage().data_ptr() for t in tensors]
    in_file = [
        address for address in addresses if any(low <= address < high for low, high in mapped_ranges(checkpoint))
    ]
    if mode == "none":
        # Without quantization every weight is needed, and the views save a copy: kept.
        assert in_file
    else:
        assert in_file == []
