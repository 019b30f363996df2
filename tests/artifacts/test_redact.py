"""Credentials never reach an adapter folder: blanked in training_config.yaml, absent from the model card."""

from __future__ import annotations

import os

import pytest
import yaml

from lit_lora.artifacts.model_card import model_card, training_config_text
from lit_lora.artifacts.redact import is_secret_name, redact
from tests.helpers.parsing import build, parse
from tests.helpers.tiny import REPO, tiny_args

API_KEY = "sk-live-0123456789abcdef"
HF_TOKEN = "hf_SECRETSECRETSECRET"


@pytest.mark.parametrize(
    "name", ["api_key", "hf_token", "WANDB_API_KEY", "apiKey", "clientSecret", "password", "token", "access_token"]
)
def test_credential_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["max_new_tokens", "pad_token_id", "tokenizer_name_or_path", "allow_special_tokens_in_text", "eos_token"]
)
def test_settings_that_only_mention_tokens_are_kept(name):
    assert not is_secret_name(name)


def test_redact_blanks_nested_values_and_names_them():
    data = {"trainer": {"logger": [{"init_args": {"api_key": "x", "name": "run", "password": None}}]}, "seed": 1}
    assert redact(data) == (
        {"trainer": {"logger": [{"init_args": {"api_key": None, "name": "run", "password": None}}]}, "seed": 1},
        ["trainer.logger[0].init_args.api_key"],
    )


def test_a_loggers_credentials_in_yaml_stay_out_of_the_adapter_folder(tmp_path):
    logger = tmp_path / "logger.yaml"
    logger.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": {
                        "class_path": "tests.helpers.loggers.CredentialedCSVLogger",
                        "init_args": {"api_key": API_KEY, "hf_token": HF_TOKEN, "name": "keyed"},
                    }
                }
            }
        )
    )
    args = tiny_args("fit", tmp_path / "run", "--config", str(logger))
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        cli = build(args)
        assert cli.trainer.logger.api_key == API_KEY  # the run itself has them
        cli.model.configure_model()
        config = training_config_text(cli.trainer, cli.model)
        card = model_card(cli.trainer, cli.model, tmp_path / "run" / "adapter")
        for text in (config, card):
            assert API_KEY not in text and HF_TOKEN not in text
        assert config.splitlines()[:2] == [
            f"# trainer.logger.init_args.{name}: removed (a credential); set it again, or through its environment "
            "variable, to rerun."
            for name in ("api_key", "hf_token")
        ]
        # Still the run's whole config: it parses, to the same settings but the credentials.
        saved = tmp_path / "training_config.yaml"
        saved.write_text(config)
        again = parse(["fit", "--config", str(saved)]).fit.as_dict()
        original = parse(args).fit.as_dict()
    finally:
        os.chdir(cwd)
    logger_args = original["trainer"]["logger"]["init_args"]
    assert (logger_args["api_key"], logger_args["hf_token"]) == (API_KEY, HF_TOKEN)
    logger_args.update(api_key=None, hf_token=None)
    for config in (again, original):
        config.pop("config")
    assert again == original
