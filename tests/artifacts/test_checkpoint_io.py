"""AtomicCheckpointIO: checkpoint files are complete or absent, never half-written.

Covers the save/load round trip, that no ``.partial`` file stays behind, that a write
failing midway leaves the previous file byte-identical (the broken bytes stay in the
``.partial`` file), that missing parent folders are created, and that non-local
paths and ``storage_options`` go to Lightning's own writer.
"""

from __future__ import annotations

import fsspec
import pytest
import torch

from lit_lora.artifacts.checkpoint_io import AtomicCheckpointIO


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
    # The interrupted write went to the side file, which is not a loadable checkpoint.
    partial = tmp_path / "last.ckpt.partial"
    assert partial.stat().st_size > 0
    with pytest.raises(RuntimeError):
        torch.load(partial, weights_only=True)


def test_a_write_killed_halfway_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    # A kill or a full disk: half of the serialized bytes reach the file, then nothing.
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    before = path.read_bytes()

    real_save = torch.save
    written = {}

    def half_save(obj, file, *args, **kwargs):
        real_save(obj, tmp_path / "whole.bin")
        whole = (tmp_path / "whole.bin").read_bytes()
        written["bytes"] = whole[: len(whole) // 2]
        file.write(written["bytes"])
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="no space left"):
        io.save_checkpoint(checkpoint(2.0), path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert (tmp_path / "last.ckpt.partial").read_bytes() == written["bytes"]
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(1.0))


def test_the_next_save_after_a_failed_one_replaces_the_stale_partial_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    (tmp_path / "last.ckpt.partial").write_bytes(b"half a checkpoint")
    io.save_checkpoint(checkpoint(3.0), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert_same_checkpoint(io.load_checkpoint(path), checkpoint(3.0))


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
