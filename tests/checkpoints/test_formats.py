"""Weight formats: fp8 (e4m3fn, e5m2, ComfyUI scaled) and GGUF (Q8_0, Q4_0, Q5_0, Q6_K) files load with their
weights kept in the storage format, and give the outputs of a dense model built from the oracle's dense weights
(torch fp8 casts; ``gguf.quants.dequantize``) exactly, and those of the bf16 source up to the quantization error.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from latentworks.checkpoints.formats import GGUFStateDict, describe_storage
from latentworks.checkpoints.io import CheckpointError, build_on_meta
from latentworks.checkpoints.keymaps.flux_bfl import flux_bfl_to_ours, ours_to_flux_bfl
from latentworks.diffusion.conditioning import Conditioning
from latentworks.families.load import open_weights, read_checkpoint
from latentworks.models.flux import Flux, FluxConfig
from latentworks.nn.quant import GGUF_BLOCKS, QuantizedTensor, dequantize_gguf, fp8_quantize, storage_format
from latentworks.pipelines.loading import model_from_parts
from support.formats import write_gguf, write_safetensors

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

# FLUX.1's head layout (head_dim 128, RoPE axes 16/56/56) at width 256, so detection reads the config back exactly;
# widths that are multiples of 256 let the K-quants quantize every matrix but img_in (64 inputs: stays F32).
CONFIG = FluxConfig(
    in_channels=16, width=256, num_heads=2, double_depth=1, single_depth=2, context_dim=256, pooled_dim=256,
    axes_dim=(16, 56, 56), guidance_embed=True,
)  # fmt: skip

# Relative output error against the bf16 source, as measured (docs/results.md); bounds at about 2x.
ERROR_BOUNDS = {
    "bf16": 0.0,
    "fp16": 1e-3,
    "fp8_e4m3fn": 0.12,
    "fp8_e5m2": 0.25,
    "fp8_scaled": 0.12,
    "Q8_0": 0.03,
    "Q6_K": 0.08,
    "Q5_0": 0.2,
    "Q4_0": 0.4,
}


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """The tiny FLUX in BFL single-file layout, bf16 values (what every other format is made from)."""
    torch.manual_seed(0)
    net = Flux(CONFIG)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return {k: v.to(torch.bfloat16) for k, v in ours_to_flux_bfl(net.state_dict(), CONFIG).items()}


def _inputs() -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 16, 16, generator=g)
    cond = Conditioning(
        tokens=torch.randn(1, 8, 256, generator=g),
        pooled=torch.randn(1, 256, generator=g),
        extra={"guidance": torch.tensor([3.5])},
    )
    return x, torch.tensor([0.6]), cond


def _dense_output(state: dict[str, torch.Tensor]) -> torch.Tensor:
    net = build_on_meta(Flux, CONFIG, flux_bfl_to_ours({k: v.float() for k, v in state.items()}, CONFIG))
    with torch.no_grad():
        return net(*_inputs())


def _write(source: dict[str, torch.Tensor], folder: Path, fmt: str) -> tuple[Path, dict[str, torch.Tensor]]:
    if fmt.startswith("Q"):
        path = folder / f"flux_{fmt}.gguf"
        return path, write_gguf(source, path, fmt)
    path = folder / f"flux_{fmt}.safetensors"
    return path, write_safetensors(source, path, fmt)


@pytest.mark.parametrize("fmt", list(ERROR_BOUNDS))
def test_format_gives_the_oracle_output_and_the_source_output_up_to_quantization(
    source: dict[str, torch.Tensor], tmp_path: Path, fmt: str
) -> None:
    path, oracle = _write(source, tmp_path, fmt)
    parts = read_checkpoint(path, dtype=torch.float32)
    assert parts.family.name == "flux-dev" and parts.denoiser_config == CONFIG  # detected from logical shapes
    if fmt.startswith("fp8"):  # this CPU has no fp8 compute: the fallback is said
        with pytest.warns(UserWarning, match=r"Flux has weights stored in fp8 .* cpu has no fp8 compute"):
            net = model_from_parts(parts, without_vae=True).denoiser_net
    else:
        net = model_from_parts(parts, without_vae=True).denoiser_net
    quantized = [p for p in net.parameters() if isinstance(p, QuantizedTensor)]
    if fmt in ("bf16", "fp16"):
        assert not quantized
    else:
        assert len(quantized) >= 25  # every matrix but (for K-quants) img_in stays in its storage format
        want = "F8_E4M3" if fmt in ("fp8_e4m3fn", "fp8_scaled") else "F8_E5M2" if fmt == "fp8_e5m2" else fmt
        assert {p.qtype for p in quantized} == {want}
        assert all((p.scale is not None) == (fmt == "fp8_scaled") for p in quantized)
    with torch.no_grad():
        out = net(*_inputs())
    torch.testing.assert_close(out, _dense_output(oracle), rtol=1e-5, atol=1e-5)
    reference = _dense_output(source)
    error = float((out - reference).norm() / reference.norm())
    assert error <= ERROR_BOUNDS[fmt] + 1e-6, f"{fmt}: relative output error {error:.4f}"


def _random_blocks(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random GGUF blocks (every byte pattern is a valid block) with finite, moderate float16 scales."""
    per, nbytes = GGUF_BLOCKS[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // per * nbytes), dtype=np.uint8)
    blocks = raw.reshape(-1, nbytes)
    halves = {"Q6_K": (208,), "Q4_1": (0, 2), "Q5_1": (0, 2), "Q4_K": (0, 2), "Q5_K": (0, 2)}.get(qtype, (0,))
    for at in halves:
        values = rng.uniform(-0.1, 0.1, size=blocks.shape[0]).astype(np.float16)
        blocks[:, at : at + 2] = values.view(np.uint8).reshape(-1, 2)
    return raw


@pytest.mark.parametrize("qtype", list(GGUF_BLOCKS))
def test_gguf_dequantization_equals_the_gguf_package(qtype: str) -> None:
    raw = _random_blocks(qtype, 3, 512, seed=len(qtype))
    want = quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    got = dequantize_gguf(torch.from_numpy(raw.copy()), qtype, (3, 512), torch.float32)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("qtype, fp8", [("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)])
def test_fp8_storage_round_trips_like_torch_casts(qtype: str, fp8: torch.dtype) -> None:
    w = torch.randn(64, 96) * 3
    plain = fp8_quantize(w, qtype)
    assert plain.qdata.dtype == fp8 and plain.stored_bytes == w.numel()
    torch.testing.assert_close(plain.dequantize(), w.to(fp8).float(), rtol=0, atol=0)
    scaled = fp8_quantize(w, qtype, scaled=True)
    scale = w.abs().amax() / torch.finfo(fp8).max
    torch.testing.assert_close(scaled.dequantize(), (w / scale).to(fp8).float() * scale, rtol=1e-6, atol=0)
    assert storage_format(scaled) == f"{qtype} scaled"


def test_quantized_weight_moves_without_inflating_and_refuses_writes() -> None:
    layer = torch.nn.Linear(96, 64)
    q = fp8_quantize(layer.weight.detach(), "F8_E4M3", dtype=torch.float32)
    layer.weight = torch.nn.Parameter(q, requires_grad=False)
    x = torch.randn(5, 96)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, q.dequantize(), layer.bias))
    layer.to(torch.bfloat16)  # what a device manager's module.to(dtype) does: the compute dtype changes
    assert isinstance(layer.weight, QuantizedTensor) and layer.weight.dtype == torch.bfloat16
    assert layer.weight.qdata.dtype == torch.float8_e4m3fn
    from latentworks.nn.quant import stored_nbytes

    assert stored_nbytes(layer.weight) == 64 * 96 and stored_nbytes(layer.bias) == 64 * 2
    if torch.cuda.is_available():  # pinning keeps the stored form (needs a CUDA build with a device)
        layer.weight = torch.nn.Parameter(layer.weight.pin_memory(), requires_grad=False)
        assert isinstance(layer.weight, QuantizedTensor) and layer.weight.is_pinned()
    import copy

    twin = copy.deepcopy(layer)
    assert isinstance(twin.weight, QuantizedTensor) and isinstance(twin.weight, torch.nn.Parameter)
    assert twin.weight.qdata.data_ptr() != layer.weight.qdata.data_ptr()
    torch.testing.assert_close(twin(x.bfloat16()), layer(x.bfloat16()), rtol=0, atol=0)
    layer.to("meta")
    assert layer.weight.qdata.device.type == "meta" and isinstance(layer.weight, QuantizedTensor)
    with pytest.raises(RuntimeError, match="cannot write into a weight stored as F8_E4M3"), torch.no_grad():
        q.add_(1.0)
    with pytest.raises(
        RuntimeError, match=r"cannot assign \.data of a weight stored as F8_E4M3: move the module"
    ):
        twin.weight.data = torch.zeros(64, 96)


def test_weight_dtype_stores_the_denoiser_in_fp8(source: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path, _ = _write(source, tmp_path, "bf16")
    for weight_dtype, fp8 in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        parts = read_checkpoint(path, dtype=torch.float32, weight_dtype=weight_dtype)
        with pytest.warns(UserWarning, match="no fp8 compute"):
            net = model_from_parts(parts, without_vae=True).denoiser_net
        matrices = [p for p in net.parameters() if p.ndim >= 2]
        assert matrices and all(isinstance(p, QuantizedTensor) and p.qdata.dtype == fp8 for p in matrices)
        assert all(not isinstance(p, QuantizedTensor) for p in net.parameters() if p.ndim < 2)
        oracle = {k: (v.float().to(fp8).float() if v.ndim >= 2 else v.float()) for k, v in source.items()}
        with torch.no_grad():
            torch.testing.assert_close(net(*_inputs()), _dense_output(oracle), rtol=1e-5, atol=1e-5)


def test_describe_storage_names_the_formats(source: dict[str, torch.Tensor], tmp_path: Path) -> None:
    n = len(source)
    matrices = sum(v.ndim >= 2 for v in source.values())
    k_quantized = sum(v.ndim >= 2 and v.shape[-1] % 256 == 0 for v in source.values())
    assert describe_storage(_write(source, tmp_path, "bf16")[0]) == f"bf16 ({n} tensors)"
    assert describe_storage(_write(source, tmp_path, "fp8_scaled")[0]) == (
        f"fp8 e4m3fn scaled ({matrices} tensors), bf16 ({n - matrices}); ComfyUI scaled fp8 (asks for fp8 matmul)"
    )
    assert describe_storage(_write(source, tmp_path, "Q6_K")[0]) == (
        f"GGUF Q6_K ({k_quantized} tensors), F32 ({n - k_quantized})"
    )


# -- bad input ---------------------------------------------------------------------------------------------


def test_truncated_and_garbage_gguf_files_are_clear_errors(
    source: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path, _ = _write(source, tmp_path, "Q8_0")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"cut\.gguf: .*(runs past the end|header cannot be read).* truncated"
    ):
        read_checkpoint(cut)
    header_cut = tmp_path / "header_cut.gguf"
    header_cut.write_bytes(data[:200])
    with pytest.raises(
        CheckpointError, match=r"header_cut\.gguf: the GGUF header cannot be read .* truncated"
    ):
        read_checkpoint(header_cut)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(CheckpointError, match=r"garbage\.gguf: not a GGUF file \(it starts with b'\\x89PNG'"):
        read_checkpoint(garbage)
    bad_counts = tmp_path / "bad_counts.gguf"
    bad_counts.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40))
    with pytest.raises(CheckpointError, match=r"bad_counts\.gguf: the GGUF header cannot be read"):
        read_checkpoint(bad_counts)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("wan", r"GGUF architecture 'wan' is a ComfyUI-GGUF model type that latentworks does not run; supported: "
                r".*flux \(FLUX\.1 \[dev\] / FLUX\.1 \[schnell\]\).*lumina2 \(Z-Image"),
        ("llama", r"a GGUF text encoder \(architecture 'llama'.*use the safetensors"),
        ("gpt2000", r"GGUF architecture 'gpt2000' is not a diffusion-model architecture"),
    ],
)  # fmt: skip
def test_gguf_of_an_unknown_architecture_is_a_clear_error(tmp_path: Path, arch: str, message: str) -> None:
    path = tmp_path / f"{arch}.gguf"
    write_gguf({"blocks.0.weight": torch.randn(32, 64)}, path, "Q8_0", arch=arch)
    with pytest.raises(CheckpointError, match=message):
        open_weights(path)  # the families' GGUF architectures


def test_gguf_of_a_known_architecture_but_no_model_names_what_was_looked_for(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    write_gguf({"blocks.0.weight": torch.randn(32, 64)}, path, "Q8_0", arch="flux")
    with pytest.raises(ValueError, match=r"odd\.gguf: no denoiser keys found"):
        read_checkpoint(path)


# -- command line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight_dtype, fp8, scaled",
    [("fp8_e4m3fn", torch.float8_e4m3fn, False), ("fp8_e4m3fn_scaled", torch.float8_e4m3fn, True),
     ("fp8_e5m2", torch.float8_e5m2, False)],
)  # fmt: skip
def test_convert_writes_fp8_single_files_that_load_back(
    source: dict[str, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    weight_dtype: str,
    fp8: torch.dtype,
    scaled: bool,
) -> None:
    from safetensors import safe_open

    from latentworks.cli import main

    path, _ = _write(source, tmp_path, "bf16")
    out = tmp_path / f"out_{weight_dtype}.safetensors"
    args = ["convert", str(path), "--to", "single-file", "--weight-dtype", weight_dtype, "--out", str(out)]
    assert main(args) == 0
    prefix = "model.diffusion_model."
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        for k, v in source.items():
            stored = f.get_tensor(prefix + k)
            if v.ndim < 2:
                assert stored.dtype == torch.bfloat16 and torch.equal(stored, v), k
                continue
            assert stored.dtype == fp8, k
            if scaled:  # ComfyUI's scaled fp8: weight = fp8 * scale_weight, scale = max|w| / 448
                scale = f.get_tensor(prefix + k.removesuffix(".weight") + ".scale_weight")
                assert scale.dtype == torch.float32 and scale.shape == ()
                torch.testing.assert_close(scale, v.float().abs().amax() / 448.0)
                torch.testing.assert_close(stored.float(), (v.float() / scale).to(fp8).float())
            else:
                torch.testing.assert_close(stored.float(), v.float().to(fp8).float(), rtol=0, atol=0)
    assert (prefix + "scaled_fp8" in keys) == scaled
    assert main(["info", "--model", str(out)]) == 0
    text = capsys.readouterr().out
    label = {"fp8_e4m3fn": "fp8 e4m3fn", "fp8_e4m3fn_scaled": "fp8 e4m3fn scaled", "fp8_e5m2": "fp8 e5m2"}
    assert f"storage     {label[weight_dtype]} (" in text and "flux-dev" in text
    parts = read_checkpoint(out, dtype=torch.float32)
    assert parts.family.name == "flux-dev" and parts.denoiser_config == CONFIG


def test_info_describes_a_gguf_file(
    source: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentworks.cli import main

    path, _ = _write(source, tmp_path, "Q8_0")
    assert main(["info", "--model", str(path)]) == 0
    text = capsys.readouterr().out
    params = sum(v.numel() for v in source.values())
    assert (
        "flux-dev" in text and f"parameters  denoiser {params:,}" in text
    )  # logical shapes, not byte shapes
    assert "storage     GGUF Q8_0 (" in text


def test_convert_refuses_fp8_for_diffusers_folders(
    source: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentworks.cli import main

    path, _ = _write(source, tmp_path, "bf16")
    code = main(
        [
            "convert",
            str(path),
            "--to",
            "diffusers",
            "--weight-dtype",
            "fp8_e4m3fn",
            "--out",
            str(tmp_path / "d"),
        ]
    )
    assert code != 0 and "writes fp8 single files only" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# -- other families and text encoders through the same path -------------------------------------------------


def test_zimage_gguf_and_scaled_fp8_text_encoder_load_through_the_same_path(tmp_path: Path) -> None:
    """Z-Image as ComfyUI-GGUF writes it (architecture ``lumina2``) is detected from its logical shapes, and a
    ComfyUI scaled-fp8 Qwen3 text encoder builds the same model as its oracle's dense weights."""
    from dataclasses import replace

    from latentworks.checkpoints.formats import open_storage
    from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy
    from latentworks.models.text.qwen import build_qwen3
    from latentworks.models.zimage import PRESETS, ZImage
    from support.qwen import tiny_qwen3

    config = replace(PRESETS["tiny"], in_channels=16, context_dim=64)
    torch.manual_seed(3)
    z = ZImage(config)
    with torch.no_grad():
        for p in z.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = ours_to_zimage_comfy(z.state_dict(), config)
    write_gguf(state, tmp_path / "z_image_turbo-Q8_0.gguf", "Q8_0", arch="lumina2")
    parts = read_checkpoint(tmp_path / "z_image_turbo-Q8_0.gguf", dtype=torch.float32)
    assert parts.family.name == "z-image" and parts.denoiser_config == config
    assert any(isinstance(v, QuantizedTensor) for v in parts.denoiser_state.values())

    qwen = tiny_qwen3(width=64)
    oracle = write_safetensors(
        {f"model.{k}": v for k, v in qwen.state_dict().items()},
        tmp_path / "qwen_fp8_scaled.safetensors",
        "fp8_scaled",
    )
    weights = open_storage(tmp_path / "qwen_fp8_scaled.safetensors")
    assert "model.scaled_fp8" not in weights and not any(k.endswith(".scale_weight") for k in weights)
    ids = torch.tensor([[151643, 9707, 11, 1879, 0]])
    mask = torch.ones_like(ids)
    encoder = build_qwen3(weights)
    assert all(
        isinstance(p, QuantizedTensor) and p.scale is not None for p in encoder.parameters() if p.ndim >= 2
    )
    with torch.no_grad():
        got = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        want = build_qwen3(oracle)(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_lora_on_fp8_weights_is_added_by_hooks_and_removed_exactly() -> None:
    from latentworks.checkpoints.lora import LoraPatch, ResolvedLora, apply_loras

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 16))
    for layer in (model[0], model[2]):
        layer.weight = torch.nn.Parameter(fp8_quantize(layer.weight.detach(), "F8_E4M3"), requires_grad=False)
    down, up = torch.randn(4, 32), torch.randn(48, 4)
    patch = LoraPatch(module="0", down=down, up=up, scale=0.5, rows=None, source="lora_0")
    lora = ResolvedLora(name="l.safetensors", target="unet", patches=(patch,), unmatched=())
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = model(x)
        w0 = model[0].weight.dequantize() + 0.8 * 0.5 * up @ down  # strength 0.8 * alpha / rank 0.5
        want = model[2](torch.nn.functional.gelu(torch.nn.functional.linear(x, w0, model[0].bias)))
        with apply_loras(model, [(lora, 0.8)], mode="patch") as handle:  # patching fp8 in place is impossible
            assert handle.mode == "hook"
            torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert isinstance(model[0].weight, QuantizedTensor)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_table_conversion_equals_torch_casts_for_all_256_values(
    fp8: torch.dtype, dtype: torch.dtype
) -> None:
    from latentworks.nn.quant import fp8_to

    every = torch.arange(256, dtype=torch.uint8).view(fp8).reshape(16, 16)
    torch.testing.assert_close(fp8_to(every, dtype), every.to(dtype), rtol=0, atol=0, equal_nan=True)
    scale = torch.tensor(0.0123)
    want = (every.to(torch.float32) * scale).to(dtype)
    torch.testing.assert_close(fp8_to(every, dtype, scale), want, rtol=0, atol=0, equal_nan=True)


def test_gguf_tensors_stored_reshaped_come_back_in_their_original_shape(tmp_path: Path) -> None:
    """ComfyUI-GGUF stores a conv kernel whose last dimension fits no block as rows of whole blocks and records
    the true shape in ``comfy.gguf.orig_shape.<name>`` (an INT32 array)."""
    kernel = torch.randn(32, 32, 3, 3)
    rows = kernel.reshape(32, 288).numpy()
    blocks = quants.quantize(rows, gguf.GGMLQuantizationType.Q8_0)
    path = tmp_path / "conv.gguf"
    writer = gguf.GGUFWriter(str(path), arch="sd1")
    writer.add_tensor("input_blocks.1.0.in_layers.2.weight", blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_array("comfy.gguf.orig_shape.input_blocks.1.0.in_layers.2.weight", [32, 32, 3, 3])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    weights = GGUFStateDict(path)
    assert weights.shapes() == {"input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3)}
    got = weights["input_blocks.1.0.in_layers.2.weight"]
    assert isinstance(got, QuantizedTensor) and got.shape == (32, 32, 3, 3)
    want = quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0).reshape(32, 32, 3, 3)
    np.testing.assert_array_equal(got.dequantize().numpy(), want)
    x = torch.randn(1, 32, 8, 8)
    conv = torch.nn.functional.conv2d(x, got, padding=1)  # used as a kernel directly
    torch.testing.assert_close(conv, torch.nn.functional.conv2d(x, torch.from_numpy(want), padding=1))

    writer = gguf.GGUFWriter(str(tmp_path / "lies.gguf"), arch="sd1")
    writer.add_tensor("w", blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_array("comfy.gguf.orig_shape.w", [32, 32, 3, 4])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        CheckpointError, match=r"lies\.gguf: tensor 'w' \(Q8_0\) has 9792 bytes, but its shape"
    ):
        GGUFStateDict(tmp_path / "lies.gguf")


def test_convert_from_gguf_writes_the_dequantized_weights(
    source: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from latentworks.cli import main

    path, oracle = _write(source, tmp_path, "Q6_K")
    out = tmp_path / "from_gguf.safetensors"
    assert main(["convert", str(path), "--to", "single-file", "--out", str(out)]) == 0
    written = load_file(str(out))
    assert len(written) == len(oracle)
    for k, v in oracle.items():
        torch.testing.assert_close(written[f"model.diffusion_model.{k}"], v, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["fp8_scaled", "Q8_0"])
def test_quantized_weights_stream_under_a_memory_budget(
    source: dict[str, torch.Tensor], tmp_path: Path, fmt: str
) -> None:
    """A quantized FLUX streamed block by block by the memory manager gives exactly its resident output, and
    the budget counts the stored (quantized) bytes, so the streamed weights stay below it."""
    import warnings

    from latentworks.nn.quant import stored_nbytes
    from latentworks.pipelines.memory import MemoryManager, stream_blocks

    path, _ = _write(source, tmp_path, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fp8 upcast notice, tested above
        net = model_from_parts(read_checkpoint(path, dtype=torch.float32), without_vae=True).denoiser_net
    with torch.no_grad():
        want = net(*_inputs())
    stored = sum(stored_nbytes(t) for t in [*net.parameters(), *net.buffers()])
    logical = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    assert stored < logical / 2  # quantized in memory
    blocks = stream_blocks(net)
    in_blocks = [sum(stored_nbytes(t) for t in b.parameters()) for b in blocks]
    budget = stored - sum(in_blocks) + max(in_blocks) + 1024  # the rest and one block: not the whole network
    assert budget < stored
    manager = MemoryManager(device="cpu", mode="none", budget=budget)
    with torch.no_grad(), manager.use(net):
        assert manager.streaming(net)
        got = net(*_inputs())
    assert torch.equal(got, want)
    assert manager.block_loads > 0 and manager.peak_bytes <= budget
    manager.release(net)
    assert any(
        isinstance(p, QuantizedTensor) for p in net.parameters()
    )  # still quantized after the round trip
