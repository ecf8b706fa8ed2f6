"""Budgets in the torch nodes: interruptible forward passes for every network family, payload sizing,
content-keyed LoadImage, and over-budget node errors raised before anything large is allocated."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import (
    BudgetExceeded,
    ExecutionContext,
    Executor,
    Interrupted,
    JobBudgets,
    JobTimedOut,
    OutputCache,
)
from latentworks.models import dit, flux, mmdit, unet
from latentworks.nodes import default_registry, guards
from latentworks.nodes.guards import banded_conv2d, chunked_attention, interruptible, payload_nbytes
from latentworks.nodes.image import _decode
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload, VAEPayload
from latentworks.nodes.sampling import _latent_upscale, run_sampler
from latentworks.pipelines.loading import load_model_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from bombs import png_bomb  # noqa: E402


def _tiny(family: str) -> tuple[torch.nn.Module, tuple]:
    """A randomised tiny network of ``family`` and forward inputs (x, t, cond) for it."""
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0])
    if family == "unet":
        cfg = unet.PRESETS["tiny"]
        net: torch.nn.Module = unet.UNet(cfg)
        cond = Conditioning(tokens=torch.randn(2, 5, cfg.context_dim))
    elif family == "dit":
        cfg = dit.PRESETS["tiny"]
        net = dit.DiT(cfg)
        cond = Conditioning(tokens=torch.randn(2, 5, cfg.context_dim), pooled=torch.randn(2, cfg.pooled_dim))
    elif family == "mmdit":
        cfg = mmdit.PRESETS["tiny"]
        net = mmdit.MMDiT(cfg)
        cond = Conditioning(tokens=torch.randn(2, 5, cfg.context_dim), pooled=torch.randn(2, cfg.pooled_dim))
    else:
        cfg = flux.PRESETS["tiny"]
        net = flux.Flux(cfg)
        cond = Conditioning(
            tokens=torch.randn(2, 5, cfg.context_dim),
            pooled=torch.randn(2, cfg.pooled_dim),
            extra={"guidance": torch.full((2,), 3.5)},
        )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # no zero-init shortcuts: every block matters
    return net.eval(), (x, t, cond)


def _blocks(net: torch.nn.Module) -> int:
    return sum(len(m) for m in net.modules() if isinstance(m, torch.nn.ModuleList))


def _containers(net: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.ModuleList | torch.nn.ModuleDict) for m in net.modules())


def test_fine_checks_only_where_a_forward_pass_is_long() -> None:
    net = torch.nn.Linear(1000, 1000)  # 1,001,000 parameters
    assert not guards.needs_fine_checks(net, 16_000) and guards.needs_fine_checks(net, 17_200)


@pytest.mark.parametrize("fine", [False, True])
@pytest.mark.parametrize("family", ["unet", "dit", "mmdit", "flux"])
def test_forward_is_bit_identical_with_hooks_and_stops_at_the_first_check_after_cancel(
    family, fine, monkeypatch
):
    net, args = _tiny(family)
    with torch.no_grad():
        want = net(*args)
        calls: list[int] = []
        # Tiny attention blocks, so the attention of these 16-64 token networks is split too.
        monkeypatch.setattr(guards, "ATTENTION_BLOCK_WORK", 1)
        with interruptible(lambda: calls.append(1), net, fine=fine) as hooks:
            got = net(*args)
        assert hooks == (len([*net.modules()]) - _containers(net) if fine else 1 + _blocks(net))
        assert torch.equal(got, want)
        assert len(calls) >= 1 + _blocks(net)  # checked at least once per block
        assert all(not m._forward_pre_hooks for m in net.modules())  # removed on exit
        assert torch.equal(net(*args), want)

        n = 0

        def cancel_at_third() -> None:
            nonlocal n
            n += 1
            if n >= 3:
                raise Interrupted("cancelled")

        with pytest.raises(Interrupted), interruptible(cancel_at_third, net, fine=fine):
            net(*args)
        assert n == 3  # nothing ran past the check that saw the cancel
        assert all(not m._forward_pre_hooks for m in net.modules())


def test_chunked_attention_matches_sdpa_and_checks_between_blocks() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 1000, 8), torch.randn(2, 3, 300, 8), torch.randn(2, 3, 300, 8)
    key_mask = torch.rand(2, 1, 1, 300) > 0.3
    row_mask = torch.randn(2, 3, 1000, 300)
    calls: list[int] = []
    for mask in (None, key_mask, row_mask):
        calls.clear()
        got = chunked_attention(lambda: calls.append(1), q, k, v, mask, block_work=1)
        assert torch.equal(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        assert len(calls) == 8  # ceil(1000 / 128) blocks of 128 query rows
    with pytest.raises(Interrupted):
        chunked_attention(lambda: (_ for _ in ()).throw(Interrupted("x")), q, k, v)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups"),
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (3, 2, 0, 1, 1), (1, 1, 0, 1, 1), (5, 1, 2, 2, 2), (3, 1, 4, 1, 1)],
)
def test_banded_conv_equals_conv2d_bit_for_bit(
    kernel, stride, padding, dilation, groups, monkeypatch
) -> None:
    # The U-Net and VAE shapes (3x3 stride 1 pad 1, stride-2 downsamplers, 1x1), a dilated grouped conv,
    # and padding wider than a band, so that some bands read only padding rows.
    monkeypatch.setattr(guards, "CONV_BAND_MIN_VALUES", 1)  # bands of one output row
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 8, 37, 23), torch.randn(6, 8 // groups, kernel, kernel), torch.randn(6)
    want = F.conv2d(x, w, b, stride, padding, dilation, groups)
    calls: list[int] = []
    got = banded_conv2d(lambda: calls.append(1), x, w, b, stride, padding, dilation, groups, band_work=1)
    assert torch.equal(got, want)
    assert len(calls) == want.shape[-2]


def test_banded_conv_of_a_single_image_uses_bands_large_enough_for_the_same_kernel() -> None:
    # A batch of one in bands of a few rows would run PyTorch's im2col kernel instead of oneDNN's and
    # differ in the last bits (3e-6 on the default VAE); CONV_BAND_MIN_VALUES keeps bands large enough.
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 48, 128, 128), torch.randn(48, 48, 3, 3), torch.randn(48)
    calls: list[int] = []
    got = banded_conv2d(lambda: calls.append(1), x, w, b, 1, 1, band_work=1)
    assert torch.equal(got, F.conv2d(x, w, b, 1, 1))
    rows = -(-guards.CONV_BAND_MIN_VALUES // (48 * 128))
    assert len(calls) == -(-128 // rows) > 1
    assert torch.equal(banded_conv2d(lambda: None, x[0], w, b, 1, 1, band_work=1), got[0])  # (C, H, W)


class _CountConvs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.convs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.convs += func is F.conv2d
        return func(*args, **(kwargs or {}))


def test_a_cancel_after_the_first_band_stops_the_convolution(monkeypatch) -> None:
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 64, 64)  # 2 * 64 * 64 * 8 * 8 * 9 = 4.7 M multiply-adds
    monkeypatch.setattr(guards, "CONV_BAND_WORK", 2**18)  # 2 * 64 * 8 * 8 * 9 = 73,728 per row: 3 rows a band
    monkeypatch.setattr(guards, "CONV_BAND_MIN_VALUES", 1)
    cancel = False
    checks = 0

    def check() -> None:
        nonlocal checks
        checks += 1
        if cancel:
            raise Interrupted("cancelled")

    with torch.no_grad():
        with _CountConvs() as counted, interruptible(check, conv):
            want = conv(x)
        assert counted.convs == 22 and checks == 1 + 22  # the module's pre-hook, then one per band
        assert torch.equal(want, F.conv2d(x, conv.weight, conv.bias, 1, 1))

        checks = 0

        def cancel_after_first_band() -> None:
            nonlocal cancel
            check()
            cancel = checks >= 2  # the first band is running once the second check has passed

        with pytest.raises(Interrupted), _CountConvs() as counted:
            with interruptible(cancel_after_first_band, conv):
                conv(x)
        assert counted.convs == 1  # the band after the cancel never ran


@pytest.mark.parametrize("threads", [1, 2])
def test_default_model_is_unchanged_with_every_convolution_in_bands(threads, monkeypatch) -> None:
    # Bit for bit on one thread; on two (CI) within 5e-6 of the output's largest value, see banded_conv2d.
    # CONV_BAND_MIN_VALUES says why bands are never tiny.
    folder = load_model_folder("default")
    net, vae = folder.denoiser_net.eval(), folder.vae.eval()
    torch.manual_seed(0)
    x, t = torch.randn(2, net.config.in_channels, 48, 48), torch.tensor([100.0, 700.0])
    cond = Conditioning(tokens=torch.randn(2, 7, net.config.context_dim))
    z = torch.randn(1, vae.config.latent_channels, 32, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            want_x, want_z = net(x, t, cond), vae.decode(z)
            monkeypatch.setattr(guards, "CONV_BAND_WORK", 2**20)  # every 3x3 conv in several bands
            with _CountConvs() as counted, interruptible(lambda: None, net, vae):
                got_x, got_z = net(x, t, cond), vae.decode(z)
    finally:
        torch.set_num_threads(before)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in (*net.modules(), *vae.decoder.modules())) + 1
    assert counted.convs > 2 * convs  # split indeed
    for got, want in ((got_x, want_x), (got_z, want_z)):
        if threads == 1:
            assert torch.equal(got, want)
        else:  # oneDNN's threaded 1x1 kernels (the U-Net's skip convs) round by band height
            err = ((got - want).abs().max() / want.abs().max()).item()
            assert err <= 5e-6, err  # measured 1.4e-6 on the U-Net (float32 eps: 1.2e-7)


def test_payload_sizes_count_tensors_and_shared_networks_once() -> None:
    lin = torch.nn.Linear(10, 20)  # (10 * 20 + 20) float32 = 880 bytes
    lin.register_buffer("steps", torch.zeros(5, dtype=torch.int64))  # 40 bytes
    image = torch.zeros(2, 16, 16, 3)  # 6144 bytes
    half = torch.zeros(3, 4, dtype=torch.float16)  # 24 bytes

    class Encoder:  # a plain object holding a network, like the text encoders
        def __init__(self, net: torch.nn.Module) -> None:
            self.net = net

    outputs = (VAEPayload(vae=lin, latent_format=None), Encoder(lin), image, [half, image])  # type: ignore[arg-type]
    assert payload_nbytes(outputs) == 880 + 40 + 6144 + 24


def _write(path: Path, rgb: tuple[int, int, int]) -> None:
    Image.fromarray(np.full((8, 8, 3), rgb, np.uint8)).save(path)


def test_load_image_is_keyed_by_content(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    _write(inp / "a.png", (255, 0, 0))
    executor = Executor(default_registry(None, inp))
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }

    def run() -> tuple[list[str], tuple[int, ...]]:
        ctx = executor.new_context("j", output_dir=tmp_path, temp_dir=tmp_path, input_dir=inp)
        res = executor.execute(wf, ctx)
        assert res.status == "success", res.error
        shown = res.outputs["2"]["images"][0]
        return res.executed, Image.open(tmp_path / shown["subfolder"] / shown["filename"]).getpixel((0, 0))

    assert run() == (["1", "2"], (255, 0, 0))
    assert run()[0] == []  # unchanged file: both nodes come from the cache
    st = os.stat(inp / "a.png")
    _write(inp / "a.png", (0, 0, 255))  # overwritten in place, mtime put back: only the content differs
    os.utime(inp / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(inp / "a.png").st_ino == st.st_ino
    assert run() == (["1", "2"], (0, 0, 255))


def test_load_image_refuses_a_bomb_before_decoding(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "bomb.png").write_bytes(png_bomb(9000, 9000))  # 9.9 KB, 81 MP
    (inp / "huge.png").write_bytes(png_bomb(20000, 20000))  # over PIL's own limit as well
    executor = Executor(default_registry(None, inp))
    for name, claim in (("bomb.png", "81,000,000 pixels"), ("huge.png", "400000000 pixels")):
        wf = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        start = time.monotonic()
        res = executor.execute(
            wf, executor.new_context("j", output_dir=tmp_path, temp_dir=tmp_path, input_dir=inp)
        )
        assert time.monotonic() - start < 2.0  # decoding 81 MP would take ~15 s and 3 GB
        assert res.status == "error" and res.error is not None and res.error["node_id"] == "1"
        msg = res.error["exception_message"]
        assert f"LoadImage (node 1), input image {name!r}" in msg and claim in msg, msg
        assert "16,777,216 pixels per image" in msg and "--max-image-pixels" in msg


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model, root / "checkpoints" / "tiny")
    return root


def t2i(width: int = 16, height: int = 16, batch: int = 1, steps: int = 2) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "an apple", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": batch},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 1,
                "steps": steps,
                "cfg": 3.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["6", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


@pytest.fixture(scope="module")
def model(models_dir: Path) -> ModelPayload:
    return ModelPayload(load_model_folder(models_dir / "checkpoints" / "tiny"))


def _context(
    tmp_path: Path, budgets: JobBudgets, node: tuple[str, str] = ("3", "KSampler")
) -> ExecutionContext:
    ctx = ExecutionContext(prompt_id="j", cache=OutputCache(), budgets=budgets, output_dir=tmp_path)
    ctx.node_id, ctx.class_type = node
    return ctx


def _sample(ctx: ExecutionContext, model: ModelPayload, latent: Latent) -> Latent:
    """KSampler's body with a made-up conditioning (no text encoder to load)."""
    cond = ConditioningPayload(Conditioning(tokens=torch.randn(1, 3, 384)))
    return run_sampler(ctx, model, 1, 1, 3.0, "euler", "normal", cond, cond, latent)


def test_over_budget_nodes_fail_with_node_errors(
    models_dir: Path, model: ModelPayload, tmp_path: Path
) -> None:
    # Through the executor: EmptyLatentImage fails before anything is sampled or decoded.
    executor = Executor(default_registry(models_dir), budgets=JobBudgets(max_batch_pixels=4096 * 4096))
    res = executor.execute(
        t2i(4096, 4096, 2), executor.new_context("j", output_dir=tmp_path, temp_dir=tmp_path)
    )
    assert res.status == "error" and res.error is not None and res.error["node_id"] == "5"
    msg = res.error["exception_message"]
    assert "EmptyLatentImage (node 5), input width, height, batch_size" in msg and "--max-batch-pixels" in msg

    # The sampler refuses a latent over the cap before materialising it: 16 x 16 pixels at f2 with 4
    # channels is 256 values per image.
    ctx = _context(tmp_path, JobBudgets(max_latent_elements=500))
    with pytest.raises(
        BudgetExceeded, match=r"KSampler \(node 3\), input latent_image: a latent of 2 x 4 x 8 x 8 = 512"
    ):
        _sample(ctx, model, Latent(pixel_size=(16, 16), batch_size=2))
    assert _sample(ctx, model, Latent(pixel_size=(16, 16), batch_size=1)).samples.shape == (1, 4, 8, 8)

    # LatentUpscale to 64 x 64 pixels is over a 32 x 32 image budget; VAEDecode checks its output size.
    ctx = _context(tmp_path, JobBudgets(max_image_pixels=32 * 32), ("10", "LatentUpscale"))
    small = Latent(samples=torch.zeros(1, 4, 8, 8), factor=2)
    with pytest.raises(
        BudgetExceeded, match=r"LatentUpscale \(node 10\), input width, height: 64 x 64 = 4,096"
    ):
        _latent_upscale(ctx, small, "bilinear", 64, 64, "disabled")
    assert _latent_upscale(ctx, small, "bilinear", 32, 32, "disabled")[0].samples.shape == (1, 4, 16, 16)
    ctx = _context(tmp_path, JobBudgets(max_image_pixels=15 * 15), ("8", "VAEDecode"))
    vae = VAEPayload(model.folder.vae, model.folder.latent_format)
    with pytest.raises(BudgetExceeded, match=r"VAEDecode \(node 8\), input samples: 16 x 16 = 256"):
        _decode(ctx, small, vae)


def test_wall_time_budget_stops_a_long_network_call(model: ModelPayload, tmp_path: Path) -> None:
    ctx = _context(tmp_path, JobBudgets(max_job_seconds=1.0))
    ctx.deadline = time.monotonic() + 1.0
    start = time.monotonic()
    with pytest.raises(JobTimedOut, match="--max-job-seconds"):
        _sample(ctx, model, Latent(pixel_size=(512, 512)))  # one U-Net call alone takes ~30 s on one core
    assert time.monotonic() - start < 1.0 + 1.0
    assert all(not m._forward_pre_hooks for m in model.folder.denoiser_net.modules())
