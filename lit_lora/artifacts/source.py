"""Where a base model's files come from: a local folder, a hub id, or a GGUF file.

Everything that is not already a Hugging Face folder on disk (a GGUF file) is
converted once into a cached folder, so that every later load, quantized or not,
goes through the same ``from_pretrained(folder)`` path. Transformers cannot
quantize with bitsandbytes while reading a GGUF file, and dequantizing a GGUF costs
about 20 s for a 135M model, so the cache pays for itself on the second run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from lit_lora.errors import ConfigError

# "org/name" or "name": what the hub accepts as a repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def cache_root() -> Path:
    """Folder for converted models; ``LIT_LORA_CACHE`` overrides ``~/.cache/lit_lora``."""
    return Path(os.environ.get("LIT_LORA_CACHE", Path.home() / ".cache" / "lit_lora"))


def check_model_source(
    name_or_path: str, gguf_file: str | None = None, field: str = "model.model_name_or_path"
) -> None:
    """Fail fast, before any download or load, when a local model path cannot be right.

    Args:
        name_or_path: A local folder or a hub id.
        gguf_file: A GGUF file name inside ``name_or_path``, if the weights are GGUF.
        field: The config field the value came from, named in the error.

    Raises:
        ConfigError: The path looks local (or is no valid hub id) and does not exist,
            or the GGUF file is missing from it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            raise ConfigError(
                f"{field.rsplit('.', 1)[0]}.gguf_file: '{gguf_file}' is not in {path} "
                f"(GGUF files there: {found or 'none'}). Set gguf_file to one of them."
            )
        return
    if gguf_file is not None:
        raise ConfigError(
            f"{field}: '{name_or_path}' is not a folder on this machine, and gguf_file '{gguf_file}' "
            "must be a file inside a local folder. Point it at the folder holding the .gguf file "
            "(scripts/quickstart.sh links SmolLM2's into models/smollm2/)."
        )
    looks_local = (
        name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or path.suffix in {".gguf", ".json"}
    )
    if path.exists() or looks_local or not _HUB_ID.match(name_or_path):
        raise ConfigError(
            f"{field}: '{name_or_path}' is not a folder on this machine and not a hub id. "
            "Point it at a folder holding config.json and the weights (or a .gguf file plus "
            "gguf_file), or at a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct' when online."
        )


def gguf_as_folder(name_or_path: str, gguf_file: str) -> Path:
    """Return a cached Hugging Face folder holding the dequantized GGUF model and its tokenizer.

    The cache key is the GGUF file's resolved path, size and modification time, so a
    changed file is converted again.
    """
    source = (Path(name_or_path).expanduser() / gguf_file).resolve()
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "gguf" / f"{source.stem}-{key}"
    return cached_folder(folder, lambda out: convert_gguf(source.parent, source.name, out))


def cached_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Return ``folder``, calling ``write(tmp)`` to create it first if it is not complete.

    A file lock makes the processes of a multi-device run wait for the one that writes
    (they all reach this point at once on a first run), and the folder is written under
    another name and renamed last, so an interrupted write never looks complete.
    """
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").is_file():
            tmp = folder.with_name(folder.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            write(tmp)
            tmp.rename(folder)
    return folder


def convert_gguf(directory: str | Path, gguf_file: str, out: str | Path) -> None:
    """Dequantize a GGUF model into a plain safetensors folder (weights, config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file)
    # The GGUF quantizer stays attached after dequantizing; saving with it would write a
    # GGUF quantization_config that makes every later bitsandbytes load refuse the folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model_folder(name_or_path: str, gguf_file: str | None = None) -> str:
    """What to hand to ``from_pretrained``: the folder or hub id itself, or the converted GGUF folder."""
    return str(gguf_as_folder(name_or_path, gguf_file)) if gguf_file else name_or_path
