import os

import pytest
import torch

from latentworks.checkpoints import io


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b.c": torch.arange(5, dtype=torch.int64)}


def test_round_trip_with_metadata(tmp_path):
    p = tmp_path / "w.safetensors"
    t = _tensors()
    io.save_file_atomic(t, p, metadata={"step": "7"})
    back = io.load_state_dict(p)
    assert set(back) == set(t)
    for k in t:
        assert torch.equal(back[k], t[k])
    assert io.read_metadata(p) == {"step": "7"}
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_shared_storage_is_saved(tmp_path):
    w = torch.randn(4, 4)
    io.save_file_atomic({"w": w, "tied": w}, tmp_path / "x.safetensors")
    back = io.load_state_dict(tmp_path / "x.safetensors")
    assert torch.equal(back["w"], back["tied"])


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "w.safetensors"
    io.save_file_atomic({"x": torch.zeros(2)}, p)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_file_atomic({"x": torch.ones(2)}, p)
    monkeypatch.undo()
    assert torch.equal(io.load_state_dict(p)["x"], torch.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


@pytest.mark.parametrize("keep", [4, 20, -3])
def test_truncated_file_names_file(tmp_path, keep):
    p = tmp_path / "w.safetensors"
    io.save_file_atomic({"x": torch.randn(64)}, p)
    data = p.read_bytes()
    p.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(io.CheckpointError, match="truncated") as e:
        io.load_state_dict(p)
    assert str(p) in str(e.value)


def test_garbage_header(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes((10).to_bytes(8, "little") + b"not json!!" + b"\0" * 10)
    with pytest.raises(io.CheckpointError, match="JSON"):
        io.load_state_dict(p)


def test_pickle_refused_unless_allowed(tmp_path):
    p = tmp_path / "w.ckpt"
    torch.save({"state_dict": {"x": torch.ones(3)}}, p)
    with pytest.raises(io.CheckpointError, match="allow_pickle"):
        io.load_state_dict(p)
    assert torch.equal(io.load_state_dict(p, allow_pickle=True)["x"], torch.ones(3))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        io.load_state_dict(tmp_path / "nope.safetensors")
