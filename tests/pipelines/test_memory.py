"""Offload policy and the VAE decode guards (tiles without seams, float32 rerun after fp16 overflow)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from latentworks.models.autoencoder import PRESETS, Autoencoder, AutoencoderConfig
from latentworks.pipelines.memory import Offloader, decode_latents


class _Spy(torch.nn.Module):
    """A module that records where ``.to`` sent it (CPU-only machines have a single real device)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.where = "cpu"
        self.log: list[str] = []

    def to(self, device, *args, **kwargs):  # type: ignore[override]
        self.where = str(torch.device(device))
        self.log.append(self.where)
        return self

    def parameters(self, recurse: bool = True):  # report the recorded device
        yield torch.empty(0, device="meta") if self.where == "meta" else self.w


def test_model_offload_moves_in_and_back_out():
    vae, unet = _Spy(), _Spy()
    off = Offloader(device="meta", mode="model", offload_device="cpu")
    with off.use(unet) as m:
        assert m is unet and unet.where == "meta" and vae.where == "cpu"
    assert unet.where == "cpu"
    with off.use(vae):
        assert vae.where == "meta" and unet.where == "cpu"
    assert vae.log == ["meta", "cpu"] and unet.log == ["meta", "cpu"]
    assert off.moves == [("_Spy", "meta"), ("_Spy", "cpu")] * 2


def test_offload_returns_the_module_even_when_the_block_raises():
    spy = _Spy()
    off = Offloader(device="meta", mode="model")
    with pytest.raises(RuntimeError, match="boom"), off.use(spy):
        raise RuntimeError("boom")
    assert spy.where == "cpu"


def test_none_mode_and_resident_components_stay_on_the_device():
    a, b = _Spy(), _Spy()
    off = Offloader(device="meta", mode="none")
    with off.use(a):
        pass
    off.offload(a)
    assert a.where == "meta" and a.log == ["meta"]
    keep = Offloader(device="meta", mode="model", resident=(b,))
    with keep.use(b):
        pass
    keep.offload(b)
    assert b.where == "meta" and b.log == ["meta"]
    with pytest.raises(ValueError, match="mode must be one of"):
        Offloader(mode="sequential")  # type: ignore[arg-type]


def test_real_module_round_trip_keeps_weights():
    lin = torch.nn.Linear(3, 3)
    before = lin.weight.detach().clone()
    off = Offloader(device="cpu", mode="model")
    with off.use(lin):
        y = lin(torch.ones(1, 3))
    assert torch.equal(lin.weight, before) and y.shape == (1, 3)
    assert off.moves == []  # already on the compute device: nothing moved


# ---------------------------------------------------------------- decode guards

SMALL = AutoencoderConfig(latent_channels=4, channels=(32, 32), layers_per_block=1, norm_groups=8)


def _vae(cfg: AutoencoderConfig = SMALL) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(cfg).eval()


def _overflowing_fp16_vae() -> tuple[Autoencoder, torch.Tensor]:
    """A float16 VAE and latents for which the first decoder conv outputs ~1e6: float16 overflows
    (max 65504), float32 does not, and the GroupNorm after the conv rescales so float32 stays finite.
    Weights (<= 1000) and latents (<= 1000) are themselves representable in float16."""
    vae = _vae()
    conv = vae.decoder.conv_in
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        conv.weight.mul_(1000.0 / conv.weight.abs().max())
        peak = conv(vae.post_quant_conv(z)).abs().max().item()
        z = z * (1e6 / peak)
    assert z.abs().max() < 1e4
    return vae.half(), z.half().float()


def test_fp16_overflow_falls_back_to_the_fp32_decode():
    vae16, z = _overflowing_fp16_vae()
    with torch.no_grad():
        raw16 = vae16.decode(z.half())
    assert not torch.isfinite(raw16).all(), "the test needs an fp16 overflow to exercise the fallback"
    reference = copy.deepcopy(vae16).float()  # the same (fp16-rounded) weights in fp32
    with torch.no_grad():
        expected = reference.decode(z)
    assert torch.isfinite(expected).all()

    with pytest.warns(RuntimeWarning, match="decoding again in float32"):
        got = decode_latents(vae16, z)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert vae16.decoder.conv_in.weight.dtype == torch.float16  # restored

    with warnings.catch_warnings():  # no warning when nothing overflows
        warnings.simplefilter("error")
        fine = decode_latents(vae16, z / 1e3)
    assert torch.isfinite(fine).all()


def test_overflow_without_fallback_is_an_error():
    vae16, z = _overflowing_fp16_vae()
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        decode_latents(vae16, z, upcast_on_nonfinite=False)


def _step(error: torch.Tensor, cols: list[int]) -> float:
    """Mean |e[..., c] - e[..., c - 1]| over image columns ``cols``: how abruptly the error changes there."""
    return float(torch.stack([(error[..., c] - error[..., c - 1]).abs().mean() for c in cols]).mean())


def test_tiled_decode_has_no_seams():
    """Tiles see their own GroupNorm statistics, so a tiled decode of a real decoder differs a little from
    the full one; a seam is that difference changing abruptly at a tile border. Blended tiles show no
    such step (border steps no larger than interior ones); hard cuts (overlap 0) do."""
    vae = _vae(PRESETS["tiny"])  # f2
    z = torch.randn(1, 4, 16, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode(z)
    tiled = decode_latents(vae, z, tile=24, overlap=8)  # tiles at latent x = 0, 16, 24
    cut = decode_latents(vae, z, tile=24, overlap=0)  # tiles at latent x = 0, 24
    assert tiled.shape == full.shape == cut.shape
    rel = ((tiled - full).norm() / full.norm()).item()
    rel_cut = ((cut - full).norm() / full.norm()).item()
    borders = [32, 48, 64]  # image columns where blended tiles start or end (f=2)
    interior = [c for c in range(4, 94, 2) if c not in borders]
    e, e_cut = tiled - full, cut - full
    print(f"relative error vs full decode {rel:.3f} (blended) {rel_cut:.3f} (hard cut); error step at "
          f"borders / interior: blended {_step(e, borders):.3f}/{_step(e, interior):.3f}, "
          f"hard cut {_step(e_cut, [48]):.3f}/{_step(e_cut, interior):.3f}")  # fmt: skip
    assert rel < 0.1 and rel_cut > 2 * rel
    assert _step(e, borders) < 1.5 * _step(e, interior)
    assert _step(e_cut, [48]) > 3 * _step(e_cut, interior)  # the seam measure can fail


def test_tile_option_decodes_in_tiles_of_the_same_shape():
    vae = _vae(PRESETS["tiny"])
    z = torch.randn(1, 4, 20, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = vae.decode(z)
    assert torch.equal(decode_latents(vae, z), full)
    tiled = decode_latents(vae, z, tile=12, overlap=4)
    assert not torch.equal(tiled, full) and tiled.shape == full.shape
