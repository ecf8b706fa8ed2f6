"""Crafted and fuzzed safetensors headers: a file either loads exactly or raises CheckpointError naming it.

The oracle for a file that loads is the file itself: each tensor's raw bytes must be the bytes at its
``data_offsets`` and its shape and dtype those the header declares (dtype names mapped by the table below,
written from the safetensors format description, not taken from the module under test).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from latentworks.checkpoints import io
from latentworks.checkpoints.io import CheckpointError

# safetensors dtype name -> (torch dtype, bytes per element), from the format description.
DTYPES = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


def _file(path: Path, header: object, data: bytes = b"", *, raw_header: bytes | None = None) -> Path:
    text = raw_header if raw_header is not None else json.dumps(header, ensure_ascii=False).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _load_or_refuse(path: Path) -> dict[str, torch.Tensor] | None:
    """Load ``path`` every public way; None if refused with a CheckpointError that names the file.
    Any other exception propagates and fails the test."""
    try:
        state = io.load_state_dict(path)
        meta = io.read_metadata(path)
        lazy = io.LazyStateDict(path)
    except CheckpointError as e:
        assert str(path) in str(e), e
        return None
    assert set(lazy) == set(state)
    for k in lazy:
        assert lazy.shapes()[k] == tuple(state[k].shape)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    return state


def _check_against_file(path: Path) -> dict[str, torch.Tensor] | None:
    """Load ``path``; when it loads, every tensor must be exactly what its header entry points at."""
    state = _load_or_refuse(path)
    if state is None:
        return None
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(state) == set(entries)
    for k, e in entries.items():
        dtype, size = DTYPES.get(e["dtype"], (None, None))
        if dtype is None:  # a dtype outside this test's table (e.g. F8): check the span only
            assert state[k].numel() * state[k].element_size() == e["data_offsets"][1] - e["data_offsets"][0]
            continue
        begin, end = e["data_offsets"]
        assert state[k].dtype == dtype and list(state[k].shape) == e["shape"], k
        assert _raw_bytes(state[k]) == data[begin:end], k
    assert io.read_metadata(path) == (header.get("__metadata__") or {})
    return state


# ---- the explicit attacks ------------------------------------------------------------------------------


def test_deeply_nested_header_is_refused_before_parsing(tmp_path):
    p = _file(tmp_path / "deep.safetensors", None, raw_header=b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(CheckpointError, match="nests 200000 levels deep, more than the 16 allowed") as e:
        io.load_state_dict(p)
    assert str(p) in str(e.value)
    # brackets inside strings do not count
    ok = {"__metadata__": {"note": "[[[[" * 100}, "x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    assert torch.equal(
        io.load_state_dict(_file(tmp_path / "s.safetensors", ok, b"\x07"))["x"], torch.tensor([7])
    )


@pytest.mark.parametrize("meta", [5, "text", [["a", "b"]], {"a": 5}, {"a": None}, {"a": {"b": "c"}}])
def test_metadata_that_is_not_a_str_to_str_object_is_refused(tmp_path, meta):
    p = _file(tmp_path / "meta.safetensors", {"__metadata__": meta})
    with pytest.raises(CheckpointError, match="__metadata__") as e:
        io.read_metadata(p)
    assert str(p) in str(e.value)
    with pytest.raises(CheckpointError):
        io.load_state_dict(p)


def test_negative_shape_whose_size_matches_is_refused(tmp_path):
    # (-1) * (-4) = 4 elements = 16 bytes: the old size check passed and torch.empty failed.
    header = {"w": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}
    p = _file(tmp_path / "neg.safetensors", header, bytes(16))
    with pytest.raises(CheckpointError, match=r"tensor 'w': shape \[-1, -4\]") as e:
        io.load_state_dict(p)
    assert str(p) in str(e.value)


def test_overlapping_tensors_are_refused(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    p = _file(tmp_path / "overlap.safetensors", header, bytes(24))
    with pytest.raises(CheckpointError, match="'a' and 'b' overlap"):
        io.load_state_dict(p)
    # the same bytes named twice (an alias) is an overlap too; empty tensors own no bytes and may sit anywhere
    header["b"]["data_offsets"] = [0, 16]
    with pytest.raises(CheckpointError, match="overlap"):
        io.LazyStateDict(_file(p, header, bytes(24)))
    header["b"] = {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]}
    assert io.load_state_dict(_file(p, header, bytes(24)))["b"].shape == (0, 3)


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "shape"),
        ({"dtype": 4, "shape": [2], "data_offsets": [0, 8]}, "dtype"),
        ({"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}, "dtype"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "data_offsets"),  # past the data
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes"),
        ({"dtype": "F32", "shape": [0, 2**40, 2**40], "data_offsets": [0, 0]}, "more elements"),
        ({"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F32", "shape": [2]}, "missing"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}, "unexpected"),
        ([1, 2], "not an object"),
    ],
)
def test_malformed_entry_fields_name_the_file_and_key(tmp_path, entry, match):
    p = _file(tmp_path / "bad.safetensors", {"w.weight": entry}, bytes(8))
    with pytest.raises(CheckpointError, match=match) as e:
        io.load_state_dict(p)
    assert str(p) in str(e.value) and "'w.weight'" in str(e.value)


def test_duplicate_keys_and_oversized_header_are_refused(tmp_path):
    e = '{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    p = _file(tmp_path / "dup.safetensors", None, b"\x01", raw_header=f'{{"x": {e}, "x": {e}}}'.encode())
    with pytest.raises(CheckpointError, match="'x' twice"):
        io.load_state_dict(p)
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # a sparse file: the header length is checked before anything is read
        f.write(struct.pack("<Q", io.MAX_HEADER_BYTES + 1))
        f.truncate(io.MAX_HEADER_BYTES + 100)
    with pytest.raises(CheckpointError, match="more than the"):
        io.read_metadata(big)


def test_pickled_checkpoints_stay_refused_without_opt_in(tmp_path):
    """A .ckpt is refused unless allowed; allowed, it loads with weights_only (no arbitrary objects)."""
    p = tmp_path / "w.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    with pytest.raises(CheckpointError, match="pickle"):
        io.load_state_dict(p)
    with pytest.raises(CheckpointError, match="lazily"):
        io.LazyStateDict(p)
    assert torch.equal(io.load_state_dict(p, allow_pickle=True)["w"], torch.ones(2))
    torch.save({"w": torch.ones(1), "evil": Path("x")}, p)  # a non-tensor object in the pickle
    with pytest.raises(CheckpointError, match="weights_only"):
        io.load_state_dict(p, allow_pickle=True)


# ---- property-based fuzzing ----------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
dtype_names = st.sampled_from([*DTYPES, "F8_E4M3", "F32 ", "f32", "", "C64"]) | json_values
shapes = st.lists(st.integers(-3, 5), max_size=4) | json_values
offsets = st.lists(st.integers(-4, 300), min_size=0, max_size=3) | json_values


@st.composite
def consistent_entry(draw: st.DrawFn) -> dict:
    """An entry whose span fits its dtype and shape, at a random place (it may overlap others or run past
    the data): the checks must then find exactly the placement problems."""
    name = draw(st.sampled_from(list(DTYPES)))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    numel = 1
    for d in shape:
        numel *= d
    begin = draw(st.integers(0, 120))
    return {"dtype": name, "shape": shape, "data_offsets": [begin, begin + numel * DTYPES[name][1]]}


entries = (
    consistent_entry()
    | st.fixed_dictionaries({"dtype": dtype_names, "shape": shapes, "data_offsets": offsets})
    | json_values
)
metadata = st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=3) | json_values
headers = st.dictionaries(st.text(max_size=5), entries, max_size=4).flatmap(
    lambda h: st.one_of(st.just(h), metadata.map(lambda m: {**h, "__metadata__": m}))
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    """One path rewritten by every example (module-scoped, so hypothesis does not reuse a per-test fixture)."""
    return tmp_path_factory.mktemp("fuzz") / "f.safetensors"


@FUZZ
@given(header=headers, data=st.binary(max_size=160))
def test_fuzzed_headers_load_exactly_or_raise_checkpoint_error(fuzz_file, header, data):
    _check_against_file(_file(fuzz_file, header, data))


@FUZZ
@given(header=json_values | st.lists(json_values), data=st.binary(max_size=32))
def test_fuzzed_json_structures_load_exactly_or_raise_checkpoint_error(fuzz_file, header, data):
    _check_against_file(_file(fuzz_file, header, data))


@FUZZ
@given(blob=st.binary(max_size=400), prefix=st.booleans())
def test_random_bytes_raise_checkpoint_error(fuzz_file, blob, prefix):
    """Random bytes, optionally behind a header length that fits the file."""
    if prefix:
        blob = struct.pack("<Q", len(blob) // 2) + blob
    p = fuzz_file
    p.write_bytes(blob)
    _check_against_file(p)


@FUZZ
@given(depth=st.integers(1, 5000), opener=st.sampled_from(["[", '{"a":']), junk=st.binary(max_size=8))
def test_fuzzed_nesting_never_escapes_as_recursion_error(fuzz_file, depth, opener, junk):
    close = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + close * depth).encode() + junk
    _check_against_file(_file(fuzz_file, None, raw_header=raw))


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(draw(st.integers(0, 4))):
        dtype = DTYPES[draw(st.sampled_from(list(DTYPES)))][0]
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        raw = draw(st.binary(min_size=64, max_size=64))
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        buf = torch.frombuffer(bytearray(raw * (1 + numel * itemsize // 64)), dtype=torch.uint8)
        out[f"t{i}"] = buf[: numel * itemsize].view(dtype).reshape(shape).clone()
    return out


@FUZZ
@given(written=tensors(), meta=st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=3))
def test_files_written_by_safetensors_load_back_bit_exact(fuzz_file, written, meta):
    p = fuzz_file
    p.write_bytes(save(written, metadata=meta or None))
    loaded = _check_against_file(p)
    assert loaded is not None, "a valid file was refused"
    assert set(loaded) == set(written)
    for k, t in written.items():
        assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape
        assert _raw_bytes(loaded[k]) == _raw_bytes(t), k
    assert io.read_metadata(p) == meta
