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


# --- lazy loading, cast on load, load_into ---------------------------------------------------------


def _mixed(tmp_path):
    g = torch.Generator().manual_seed(3)
    t = {
        "enc.w": torch.randn(6, 5, generator=g),
        "enc.b": torch.randn(6, generator=g).to(torch.bfloat16),
        "dec.w": torch.randn(2, 3, 4, generator=g).to(torch.float16),
        "dec.steps": torch.arange(7, dtype=torch.int64),
        "dec.flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }
    p = tmp_path / "m.safetensors"
    io.save_file_atomic(t, p, metadata={"k": "v"})
    return t, p


def test_lazy_state_dict_reads_exact_tensors_and_header_facts(tmp_path):
    t, p = _mixed(tmp_path)
    lazy = io.LazyStateDict(p)
    assert set(lazy) == set(t) and len(lazy) == len(t) and "enc.w" in lazy and "nope" not in lazy
    assert lazy.shapes() == {k: tuple(v.shape) for k, v in t.items()}
    assert lazy.dtypes() == {k: v.dtype for k, v in t.items()}
    assert lazy.metadata == {"k": "v"}
    assert lazy.nbytes() == sum(v.numel() * v.element_size() for v in t.values())
    for k, v in t.items():
        got = lazy[k]
        assert got.dtype == v.dtype and torch.equal(got, v), k
    with pytest.raises(KeyError, match="nope"):
        lazy["nope"]


def test_cast_on_load_only_touches_floating_tensors(tmp_path):
    t, p = _mixed(tmp_path)
    back = io.load_state_dict(p, dtype=torch.float16)
    for k, v in t.items():
        want = v.to(torch.float16) if v.is_floating_point() else v
        assert back[k].dtype == want.dtype and torch.equal(back[k], want), k
    assert io.LazyStateDict(p).nbytes(torch.float16) == sum(
        v.numel() * (2 if v.is_floating_point() else v.element_size()) for v in t.values()
    )


def test_key_and_prefix_selection(tmp_path):
    t, p = _mixed(tmp_path)
    assert set(io.load_state_dict(p, prefix="dec.")) == {"dec.w", "dec.steps", "dec.flag"}
    assert set(io.load_state_dict(p, keys=["enc.w", "empty"])) == {"enc.w", "empty"}
    stripped = io.LazyStateDict(p, prefix="enc.", strip_prefix=True)
    assert set(stripped) == {"w", "b"} and torch.equal(stripped["w"], t["enc.w"])
    with pytest.raises(KeyError, match="missing.key"):
        io.LazyStateDict(p, keys=["enc.w", "missing.key"])


def test_corrupt_offsets_name_the_file(tmp_path):
    import json
    import struct

    p = tmp_path / "w.safetensors"
    io.save_file_atomic({"x": torch.randn(8), "y": torch.randn(4)}, p)
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["x"]["shape"] = [9]  # 36 bytes claimed by the shape, 32 by the offsets
    raw = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(io.CheckpointError, match="corrupt") as e:
        io.LazyStateDict(p)
    assert str(p) in str(e.value)
    with pytest.raises(io.CheckpointError, match="cannot be read lazily"):
        torch.save({"x": torch.ones(1)}, tmp_path / "w.pt")
        io.LazyStateDict(tmp_path / "w.pt")


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(5, 7)
        self.norm = torch.nn.BatchNorm1d(7)
        self.b = torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def test_load_into_meta_module_takes_the_tensors(tmp_path):
    torch.manual_seed(0)
    ref = _Net()
    ref.norm.running_mean.normal_()
    ref.eval()
    p = tmp_path / "net.safetensors"
    io.save_file_atomic(ref.state_dict(), p)
    with torch.device("meta"):
        net = _Net()
    io.load_into(net, io.LazyStateDict(p))
    net.eval()
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    assert net.norm.num_batches_tracked.dtype == torch.int64
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    assert net.a.weight.requires_grad

    with torch.device("meta"):
        half = _Net()
    io.load_into(half, io.LazyStateDict(p), dtype=torch.bfloat16)
    assert half.a.weight.dtype == torch.bfloat16
    assert torch.equal(half.a.weight, ref.a.weight.to(torch.bfloat16))
    assert half.norm.num_batches_tracked.dtype == torch.int64


def test_load_into_allocated_module_copies_in_place(tmp_path):
    torch.manual_seed(0)
    ref = _Net()
    p = tmp_path / "net.safetensors"
    io.save_file_atomic(ref.state_dict(), p)
    net = _Net()
    ptr = net.a.weight.data_ptr()
    io.load_into(net, io.LazyStateDict(p))
    assert net.a.weight.data_ptr() == ptr and torch.equal(net.a.weight, ref.a.weight)
    with pytest.raises(ValueError, match="meta device"):
        io.load_into(net, io.LazyStateDict(p), dtype=torch.float16)


def test_load_into_reports_missing_unexpected_and_shape(tmp_path):
    sd = _Net().state_dict()
    with torch.device("meta"):
        net = _Net()
    broken = {k: v for k, v in sd.items() if k != "b.bias"} | {"extra.w": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"1 missing keys \['b.bias'\], 1 unexpected keys \['extra.w'\]"):
        io.load_into(net, broken)
    with pytest.raises(ValueError, match=r"'a.weight' has shape \(5, 7\).*\(7, 5\)"):
        io.load_into(net, sd | {"a.weight": torch.zeros(5, 7)})


_PEAK_SCRIPT = r"""
import resource, sys
import torch
from latentworks.checkpoints import io

path, mode = sys.argv[1], sys.argv[2]
def rss():  # current resident set, bytes
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(1024, 1024, bias=False) for _ in range(48))
with torch.device("meta"):
    model = Stack()
base = rss()  # after imports and the meta model
# ru_maxrss is inherited from the parent (pytest, which holds the weights it just wrote), so reset the
# kernel's high-water mark to the current RSS and read it back as VmHWM (Linux >= 4.0).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
if mode == "fp16":
    io.load_into(model, io.LazyStateDict(path, dtype=torch.float16))
elif mode == "fp32":
    io.load_into(model, io.LazyStateDict(path))
else:  # the naive way: whole fp32 dict first, then cast
    from safetensors.torch import load_file
    sd = {k: v.half() for k, v in load_file(path).items()}
    model.load_state_dict(sd, assign=True)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
assert next(model.parameters()).dtype == (torch.float32 if mode == "fp32" else torch.float16)
print(peak - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_rss_while_loading_is_at_most_1_25x_the_target_weights(tmp_path):
    """~200 MB of fp32 weights: loading as fp16 peaks under 1.25 x 100 MB, as fp32 under 1.25 x 200 MB."""
    import subprocess
    import sys

    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(48)}
    p = tmp_path / "big.safetensors"
    io.save_file_atomic(sd, p)
    del sd
    fp32_bytes = 48 * 1024 * 1024 * 4
    script = tmp_path / "peak.py"
    script.write_text(_PEAK_SCRIPT)

    def peak(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, str(script), str(p), mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip().splitlines()[-1])

    fp16, fp32, naive = peak("fp16"), peak("fp32"), peak("naive")
    print(
        f"peak RSS over baseline: fp16 {fp16 / 2**20:.0f} MiB, fp32 {fp32 / 2**20:.0f} MiB, naive {naive / 2**20:.0f} MiB"
    )
    assert fp16 <= 1.25 * fp32_bytes / 2
    assert fp32 <= 1.25 * fp32_bytes
    assert (
        naive > 1.25 * fp32_bytes / 2
    )  # the measurement can fail: materialising fp32 first breaks the bound


def test_lazy_file_through_a_key_map_into_a_meta_model(tmp_path):
    """diffusers-named file -> LazyStateDict (cast to bf16 on read) -> key map -> load_into a meta model."""
    from latentworks.checkpoints.keymaps.sd_diffusers import vae_from_diffusers, vae_to_diffusers
    from latentworks.models.autoencoder import PRESETS, Autoencoder

    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    ref = Autoencoder(cfg).eval()
    p = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    io.save_file_atomic(vae_to_diffusers(ref.state_dict(), cfg), p)
    lazy = io.LazyStateDict(p, dtype=torch.bfloat16)
    assert lazy.shapes() == {k: tuple(v.shape) for k, v in vae_to_diffusers(ref.state_dict(), cfg).items()}
    with torch.device("meta"):
        vae = Autoencoder(cfg)
    io.load_into(vae, vae_from_diffusers(lazy, cfg))
    for name, t in vae.state_dict().items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, ref.state_dict()[name].to(torch.bfloat16)), name
