"""AtomicCheckpointIO: checkpoint files are complete or absent, never half-written.

Covers the save/load round trip, that no ``.partial`` file stays behind, that a write
failing midway leaves the previous file byte-identical and removes its own side file,
that each write has a side file of its own, that missing parent folders are created,
that non-local paths and ``storage_options`` go to Lightning's own writer, and that
the writer stays in place whatever ``trainer.plugins`` holds.
"""

from __future__ import annotations

import io as io_module
import os
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_lora.artifacts.checkpoint_io import AtomicCheckpointIO, keep_atomic_writer
from lit_lora.errors import ConfigError


class Unpicklable:
    """Makes ``torch.save`` fail after it has started writing the file."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def checkpoint(value: float) -> dict:
    return {
        "state_dict": {"lora_A": torch.full((4, 3), value), "lora_B": torch.arange(6.0).reshape(2, 3)},
        "global_step": 7,
        "loops": {"fit_loop": {"state_dict": {"combined_loader": [{"batches": 3}]}}},
    }


def assert_same_checkpoint(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    assert actual["state_dict"].keys() == expected["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name
    assert actual["global_step"] == expected["global_step"]
    assert actual["loops"] == expected["loops"]


def test_save_then_load_round_trips_tensors_and_plain_values(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.5), path)
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(1.5))


def test_a_successful_save_leaves_no_partial_file(tmp_path):
    AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_save_accepts_a_string_path(tmp_path):
    # Lightning passes paths as strings.
    path = str(tmp_path / "epoch00.ckpt")
    AtomicCheckpointIO().save_checkpoint(checkpoint(2.0), path)
    assert_same_checkpoint(torch.load(path, weights_only=True), checkpoint(2.0))


def test_overwriting_replaces_the_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    io.save_checkpoint(checkpoint(2.0), path)
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_write_failing_midway_leaves_the_previous_file_intact(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    before = path.read_bytes()

    broken = checkpoint(2.0)
    broken["callbacks"] = Unpicklable()  # pickled after the tensors' records start
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        io.save_checkpoint(broken, path)

    assert path.read_bytes() == before
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(1.0))
    # The failed write cleaned up its side file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_write_killed_halfway_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    # A kill or a full disk: half of the serialized bytes reach the file, then nothing.
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    before = path.read_bytes()

    real_save = torch.save
    written = {}

    def half_save(obj, file, *args, **kwargs):
        buffer = io_module.BytesIO()
        real_save(obj, buffer)
        whole = buffer.getvalue()
        file.write(whole[: len(whole) // 2])
        file.flush()
        # What a kill at this moment leaves on disk: the target untouched, half a side file.
        written["target"] = path.read_bytes()
        written["side files"] = {p.name: p.stat().st_size for p in tmp_path.glob("last.ckpt.*.partial")}
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="no space left"):
        io.save_checkpoint(checkpoint(2.0), path)
    monkeypatch.undo()

    assert written["target"] == before
    (side, size), *others = written["side files"].items()
    assert others == [] and size > 0
    assert re.fullmatch(rf"last\.ckpt\.{os.getpid()}\.[0-9a-f]{{8}}\.partial", side)
    assert path.read_bytes() == before
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_save_never_writes_into_another_writers_partial_file(tmp_path):
    # Another writer of the same target is midway: its side file must stay as it is.
    # A killed writer's (its PID is gone) is removed.
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    others = ("last.ckpt.partial", f"last.ckpt.{os.getpid()}.0badc0de.partial", f"last.ckpt.{dead_pid}.1.partial")
    for other in others:
        (tmp_path / other).write_bytes(b"half a checkpoint")
    io.save_checkpoint(checkpoint(3.0), path)
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(3.0))
    others = sorted(p.name for p in tmp_path.iterdir() if p != path)
    assert others == [f"last.ckpt.{os.getpid()}.0badc0de.partial", "last.ckpt.partial"]
    assert all((tmp_path / name).read_bytes() == b"half a checkpoint" for name in others)


def test_two_writes_of_one_target_use_two_side_files(tmp_path, monkeypatch):
    seen = []
    real_save = torch.save

    def recording_save(obj, file, *args, **kwargs):
        seen.append(Path(file.name).name)
        real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", recording_save)
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(1.0), tmp_path / "last.ckpt")
    io.save_checkpoint(checkpoint(2.0), tmp_path / "last.ckpt")
    assert len(set(seen)) == 2 and all(name.startswith(f"last.ckpt.{os.getpid()}.") for name in seen)


def test_missing_parent_folders_are_created(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "step10.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), path)
    assert_same_checkpoint(torch.load(path, weights_only=True), checkpoint(1.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["step10.ckpt"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_storage_options_go_to_lightnings_writer_which_refuses_them(tmp_path, where):
    # TorchCheckpointIO documents a TypeError for any storage_options; nothing is written.
    path = str(tmp_path / "last.ckpt") if where == "local" else "s3://bucket/run/last.ckpt"
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), path, storage_options={"anon": True})
    assert list(tmp_path.iterdir()) == []


def test_a_non_local_path_is_written_by_lightnings_writer(tmp_path, monkeypatch):
    # fsspec's in-memory filesystem stands in for an object store; offline and real.
    monkeypatch.chdir(tmp_path)  # a "memory:..." path taken as local would land here
    fs = fsspec.filesystem("memory")
    folder = f"memory://lit-lora-{tmp_path.name}"
    path = f"{folder}/checkpoints/last.ckpt"
    try:
        io = AtomicCheckpointIO()
        io.save_checkpoint(checkpoint(4.0), path)
        assert fs.ls(f"{folder}/checkpoints", detail=False) == [f"/lit-lora-{tmp_path.name}/checkpoints/last.ckpt"]
        assert_same_checkpoint(io.load_checkpoint(path), checkpoint(4.0))
    finally:
        fs.rm(folder, recursive=True)
    assert list(tmp_path.iterdir()) == []


def built_trainer(tmp_path, plugins: str):
    """The trainer ``fit`` builds on the tiny config with ``trainer.plugins`` set in a YAML file."""
    from tests.helpers.parsing import build
    from tests.helpers.tiny import REPO, tiny_args

    extra = tmp_path / "plugins.yaml"
    extra.write_text(f"trainer:\n  plugins: {plugins}\n")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return build(tiny_args("fit", tmp_path / "run", "--config", str(extra))).trainer
    finally:
        os.chdir(cwd)


def test_setting_trainer_plugins_keeps_the_atomic_writer(tmp_path):
    trainer = built_trainer(tmp_path, "[{class_path: lightning.fabric.plugins.environments.LightningEnvironment}]")
    # The plugin is in use (a single-device strategy keeps it on the connector only).
    assert type(trainer._accelerator_connector.cluster_environment).__name__ == "LightningEnvironment"
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def test_the_atomic_writer_named_in_trainer_plugins_is_the_one_used(tmp_path):
    trainer = built_trainer(tmp_path, "[{class_path: lit_lora.artifacts.checkpoint_io.AtomicCheckpointIO}]")
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def test_another_checkpoint_writer_in_trainer_plugins_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError) as error:
        built_trainer(tmp_path, "[{class_path: lightning.pytorch.plugins.io.TorchCheckpointIO}]")
    message = str(error.value)
    assert message.startswith("trainer.plugins: TorchCheckpointIO would replace lit_lora's checkpoint writer")
    assert "killed mid-write still has its previous last.ckpt" in message


def test_a_strategys_own_checkpoint_writer_is_kept():
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class OwnWriter(TorchCheckpointIO):
        """A strategy's own writer, as DeepSpeed's and XLA's strategies have."""

    strategy = SingleDeviceStrategy("cpu", checkpoint_io=OwnWriter())
    keep_atomic_writer(strategy, [])
    assert type(strategy.checkpoint_io) is OwnWriter
    plain = SingleDeviceStrategy("cpu")
    keep_atomic_writer(plain, [])
    assert type(plain.checkpoint_io) is AtomicCheckpointIO
