"""configs/recipes/: every task recipe parses through the CLI and explains its choices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.parsing import parse

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs" / "recipes").glob("*.yaml"))

# One recipe per task of the reference training guide, and classification both ways
# (a head, or the label written as text).
EXPECTED = {"chat.yaml", "code.yaml", "domain.yaml", "classify.yaml", "classification.yaml", "dpo.yaml"}
# The module and data module of the recipes that train another objective than SFT.
CLASSES = {
    "classification": ("lit_lora.ClassificationModule", "lit_lora.data.ClassificationDataModule"),
    "dpo": ("lit_lora.DPOModule", "lit_lora.data.PreferenceDataModule"),
}


def parse_fit(args: list[str]) -> dict:
    return parse(args).fit.as_dict()


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts as ``{"a.b.c": leaf}``; lists stay whole values."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


KEY = re.compile(r"^( *)(- )?([A-Za-z_][\w.]*):(.*)$")


def yaml_keys(text: str) -> dict[str, int]:
    """Dotted path of each mapping key written in a block-style YAML file -> its line index.

    Keys inside list items (``mix``, ``callbacks``) are not listed: the list counts as
    one value, under the key that holds it.
    """
    keys: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    list_indent: int | None = None  # indent of the key whose list we are inside
    for index, line in enumerate(text.splitlines()):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if list_indent is not None:
            if indent > list_indent or line.lstrip().startswith("- ") and indent == list_indent:
                continue
            list_indent = None
        match = KEY.match(line)
        if match is None:
            continue
        if match.group(2):  # a list item of the last key
            list_indent = stack[-1][0] if stack else 0
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([key for _, key in stack] + [match.group(3)])
        keys[path] = index
        stack.append((indent, match.group(3)))
    return keys


def commented(lines: list[str], index: int) -> bool:
    """The line has a trailing comment, or the line above it is a comment."""
    line = lines[index]
    value = line.split(":", 1)[1]
    if re.search(r"(^|\s)#", value):
        return True
    return index > 0 and lines[index - 1].lstrip().startswith("#")


@pytest.fixture
def defaults(tmp_path_factory, monkeypatch) -> dict:
    """lit_lora's configuration with nothing set but the required options."""
    monkeypatch.chdir(tmp_path_factory.mktemp("defaults"))
    return flatten(
        parse_fit(
            [
                "fit",
                "--model",
                "lit_lora.LoRAModule",
                "--model.model_name_or_path",
                "base",
                "--data",
                "lit_lora.data.SFTDataModule",
                "--data.train_file",
                "train.jsonl",
                # The effective default optimizer (PagedAdamW8bit, lr 2e-4, no weight decay),
                # written out so a recipe that spells it out is not counted as a change.
                "--model.optimizer",
                "bitsandbytes.optim.PagedAdamW8bit",
                "--model.optimizer.lr",
                "0.0002",
                "--model.optimizer.weight_decay",
                "0.0",
            ]
        )
    )


def test_there_is_a_recipe_per_task():
    assert {recipe.name for recipe in RECIPES} == EXPECTED


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_parses_through_the_cli(recipe, tmp_path, monkeypatch):
    # From an empty folder: the data paths are placeholders, which parsing never opens.
    monkeypatch.chdir(tmp_path)
    config = parse_fit(["fit", "--config", str(recipe)])
    module, data_module = CLASSES.get(recipe.stem, ("lit_lora.LoRAModule", "lit_lora.data.SFTDataModule"))
    assert config["model"]["class_path"] == module
    assert config["data"]["class_path"] == data_module
    data = config["data"]["init_args"]
    assert data["train_file"] or data.get("mix")
    assert config["trainer"]["default_root_dir"] == f"runs/{recipe.stem}"
    # The model's tokenizer reaches the data module through the CLI's link.
    assert data["tokenizer_name_or_path"] == config["model"]["init_args"]["model_name_or_path"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_starts_with_a_header_comment(recipe):
    lines = recipe.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line.lower())
    assert len(header) >= 5, "a recipe opens with a comment saying what it is for"
    text = "\n".join(header)
    assert "data" in text and "base model" in text and "how long" in text and "placeholder" in text


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_value_that_differs_from_the_defaults_is_explained(recipe, defaults, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = flatten(parse_fit(["fit", "--config", str(recipe)]))
    text = recipe.read_text()
    lines = text.splitlines()
    written = yaml_keys(text)
    # Every key the file writes is an option the parser knows (a typo fails to parse
    # anyway; this checks that the line-based reading of the file agrees with it).
    for path in written:
        assert path in values or any(key.startswith(path + ".") for key in values), (recipe.name, path)
    leaves = {path for path in written if path in values}
    assert leaves, recipe.name
    unexplained = [
        f"line {written[path] + 1}: {path}"
        for path in sorted(leaves)
        if values[path] != defaults.get(path, object()) and not commented(lines, written[path])
    ]
    assert not unexplained, f"{recipe.name}: values that differ from the defaults need a comment: {unexplained}"


def test_recipes_differ_where_their_tasks_do(tmp_path, monkeypatch):
    """The task-specific values the recipes exist for (reference training guide)."""
    monkeypatch.chdir(tmp_path)
    configs = {recipe.stem: parse_fit(["fit", "--config", str(recipe)]) for recipe in RECIPES}
    lora = {name: config["model"]["init_args"]["lora"] for name, config in configs.items()}
    # An unset optimizer is the default PagedAdamW8bit at 2e-4.
    optimizers = {name: config["model"]["init_args"]["optimizer"] for name, config in configs.items()}
    lr = {name: optimizer["init_args"]["lr"] if optimizer else 2e-4 for name, optimizer in optimizers.items()}
    assert {name: (lora[name]["r"], lora[name]["alpha"]) for name in lora} == {
        "chat": (16, 32),
        "code": (32, 64),
        "domain": (64, 128),
        "classify": (8, 16),
        "classification": (8, 16),
        "dpo": (16, 32),  # unused: DPO continues the SFT adapter of model.adapter_path
    }
    assert lr == {"chat": 2e-4, "code": 1e-4, "domain": 5e-5, "classify": 3e-4, "classification": 2e-4, "dpo": 5e-5}
    assert lora["classify"]["target_modules"] == lora["classification"]["target_modules"] == ["q_proj", "v_proj"]
    assert configs["dpo"]["model"]["init_args"]["adapter_path"]
    assert configs["code"]["data"]["init_args"]["max_length"] >= 2048
    assert configs["classify"]["data"]["init_args"]["max_length"] < 2048
    mix = configs["domain"]["data"]["init_args"]["mix"]
    assert len(mix) == 2 and configs["domain"]["data"]["init_args"]["val_file"]
