from lit_lora.tokenizer import load_tokenizer, tokenizer_source


def test_tokenizer_source_prefers_a_separate_tokenizer():
    assert tokenizer_source("models/m", "m.gguf", None) == ("models/m", "m.gguf")
    assert tokenizer_source("models/m", "m.gguf", "tok") == ("tok", None)


def test_missing_pad_token_becomes_eos(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"
