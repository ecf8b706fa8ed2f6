"""Our denoisers against diffusers' on identical random weights, in the same process (not a test).

For each family both models are built from the real configuration with random weights: diffusers'
model from an inline config (no hub), ours on the meta device with diffusers' tensors put in through our
key maps (``load_into``; renamed tensors share storage with diffusers', fused ones are copies). Then:

* **forward**: one denoiser call per side, median of ``--runs``; the two sides alternate in every round
  (ours, theirs, then theirs, ours) so a machine shared with other jobs slows both alike.
* **peak**: the extra memory one forward takes (CPU: sampled resident set over the RSS before the call;
  CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before it).
* **peak RSS** (``--rss``, CPU): for each family and side, a fresh subprocess builds that one model the way
  its library loads a file (ours: on ``meta``, then the weights assigned; diffusers: ``from_pretrained`` of a
  saved folder) and runs one forward; its ``VmHWM`` is the peak resident set of the whole process, reported
  whole and over the process's size after its imports.
* ``--cpu-time`` times with the process's CPU time instead of the wall clock: on a CPU shared with other
  jobs the wall clock mostly measures the neighbours.
* **full** (``--full``, SD1.5 only): 20 Euler steps with CFG (batch 2) at 512x512 plus the VAE decode.
  Ours: ``EpsDenoiser`` -> ``CFGDenoiser`` -> ``sample_euler`` -> ``decode_latents``; diffusers': the loop
  its pipelines run with ``EulerDiscreteScheduler`` and ``AutoencoderKL.decode``. Text encoding is left
  out on both sides (random prompt embeddings).

The ratio column is ours / diffusers (below 1: we are faster or smaller).

    .venv/bin/python benchmarks/vs_diffusers.py                       # CPU: SD1.5, 32x32 latent, fp32
    .venv/bin/python benchmarks/vs_diffusers.py --full                # + 20-step 512x512 generation
    .venv/bin/python benchmarks/vs_diffusers.py --device cuda --dtype bf16   # SD1.5, SDXL, SD3, FLUX
    .venv/bin/python benchmarks/vs_diffusers.py --families sd3,flux --depth 1  # reduced depth (CPU smoke)
    .venv/bin/python benchmarks/vs_diffusers.py --families zimage,qwenimage --rss  # mid-size, + peak RSS

Z-Image and Qwen-Image run on CPU at a mid-size config (width 1024 = 8 heads x 128, 4 blocks; real
context widths 2560 / 3584; ``--width``/``--depth`` change it) and on CUDA at the real width with ``--depth``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from latentworks.checkpoints.io import load_into
from latentworks.diffusion.conditioning import Conditioning

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FAMILIES = ("sd15", "sdxl", "sd3", "flux", "zimage", "qwenimage")
CPU_DEFAULT = ("sd15", "zimage", "qwenimage")  # what a CPU run covers without --families
# Mid-size CPU configs (--depth/--width unset on CPU): real head size (128), real context widths, fewer and
# narrower blocks, so a 2-core machine times a forward in about a second.
MID_WIDTH, MID_DEPTH = 1024, 4

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)


# ---------------------------------------------------------------- measuring


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples this process's resident set every ``interval`` s while active; ``.peak`` is the highest."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start = _rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK: list[Callable[[], float]] = [time.perf_counter]  # --cpu-time puts time.process_time here


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    clock = CLOCK[0]
    _sync(device)
    t = clock()
    with torch.no_grad():
        fn()
    _sync(device)
    return clock() - t


def extra_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes one call takes beyond what is allocated before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with PeakRSS() as p, torch.no_grad():
        fn()
    return p.peak - p.start


def interleaved(ours: Callable[[], Any], theirs: Callable[[], Any], runs: int, device: torch.device):
    """Median seconds of each, alternating which goes first every round, after one warm-up each."""
    time_once(ours, device)
    time_once(theirs, device)
    a, b = [], []
    for i in range(runs):
        if i % 2 == 0:
            a.append(time_once(ours, device))
            b.append(time_once(theirs, device))
        else:
            b.append(time_once(theirs, device))
            a.append(time_once(ours, device))
    return statistics.median(a), statistics.median(b), a, b


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build diffusers' model directly in ``dtype`` (a 12B FLUX in fp32 first would need 48 GB)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------- the model pairs


@dataclass
class Pair:
    family: str
    ours: torch.nn.Module
    theirs: torch.nn.Module
    ours_call: Callable[[], Any]
    theirs_call: Callable[[], Any]
    shape: str


def _build(theirs_cls: Any, kwargs: dict, ours_cls: Any, config: Any, convert: Callable, device, dtype):
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        theirs = theirs_cls(**kwargs).eval()
    with torch.device("meta"):
        ours = ours_cls(config)
    load_into(ours, convert(theirs.state_dict(), config), dtype=dtype, device=device)
    return ours.eval(), theirs


def sd_unet_pair(family: str, device: torch.device, dtype: torch.dtype, size: int, depth: int | None) -> Pair:
    import diffusers

    from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers
    from latentworks.models.unet import PRESETS, UNet

    kwargs, config = (SD15_UNET, PRESETS["sd15"]) if family == "sd15" else (SDXL_UNET, PRESETS["sdxl"])
    if family == "sdxl" and depth is not None:
        tdepth = (0, min(2, depth), min(10, depth))
        kwargs = {**kwargs, "transformer_layers_per_block": list(tdepth)}
        config = replace(config, transformer_depth=tdepth, mid_transformer_depth=tdepth[-1])
    ours, theirs = _build(
        diffusers.UNet2DConditionModel, kwargs, UNet, config, unet_from_diffusers, device, dtype
    )
    g = torch.Generator(device="cpu").manual_seed(1)
    b = 2  # CFG: cond + uncond in one batch

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    x, t, ctx = (
        rand(b, 4, size, size),
        torch.tensor([999.0, 500.0], device=device),
        rand(b, 77, config.context_dim),
    )
    added, cond = None, Conditioning(tokens=ctx)
    if config.pooled_dim:
        pooled = rand(b, config.pooled_dim)
        time_ids = torch.tensor([[8.0 * size, 8.0 * size, 0, 0, 8.0 * size, 8.0 * size]] * b, device=device)
        added = {"text_embeds": pooled, "time_ids": time_ids.to(dtype)}
        cond = Conditioning(tokens=ctx, pooled=pooled, extra={"time_ids": time_ids.to(dtype)})
    return Pair(
        family,
        ours,
        theirs,
        lambda: ours(x, t, cond),
        lambda: theirs(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample,
        f"x {tuple(x.shape)}, 77 tokens",
    )


def sd3_pair(device: torch.device, dtype: torch.dtype, size: int, depth: int | None) -> Pair:
    import diffusers

    from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_from_diffusers
    from latentworks.models.mmdit import PRESETS, MMDiT

    config = PRESETS["sd3-medium"]
    if depth is not None:
        config = replace(config, depth=depth)
    kwargs = {
        "sample_size": config.sample_size,
        "patch_size": config.patch_size,
        "in_channels": config.in_channels,
        "out_channels": config.output_channels,
        "num_layers": config.depth,
        "attention_head_dim": config.head_dim,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_dim,
        "caption_projection_dim": config.width,
        "pooled_projection_dim": config.pooled_dim,
        "pos_embed_max_size": config.pos_embed_max_size,
    }
    ours, theirs = _build(
        diffusers.SD3Transformer2DModel, kwargs, MMDiT, config, sd3_from_diffusers, device, dtype
    )
    g = torch.Generator(device="cpu").manual_seed(1)
    b, n_txt = 2, 333  # CFG batch; 77 CLIP + 256 T5 tokens
    x = torch.randn(b, 16, size, size, generator=g).to(device, dtype)
    t = torch.tensor([1000.0, 500.0], device=device)
    tokens = torch.randn(b, n_txt, 4096, generator=g).to(device, dtype)
    pooled = torch.randn(b, 2048, generator=g).to(device, dtype)
    cond = Conditioning(tokens=tokens, pooled=pooled)
    return Pair(
        "sd3",
        ours,
        theirs,
        lambda: ours(x, t, cond),
        lambda: (
            theirs(
                hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t
            ).sample
        ),
        f"x {tuple(x.shape)}, {n_txt} tokens, depth {config.depth}",
    )


def flux_pair(device: torch.device, dtype: torch.dtype, size: int, depth: int | None) -> Pair:
    import diffusers
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    from latentworks.checkpoints.keymaps.flux_diffusers import flux_from_diffusers
    from latentworks.models.flux import PRESETS, Flux

    config = PRESETS["flux-dev"]
    if depth is not None:
        config = replace(config, double_depth=depth, single_depth=depth)
    kwargs = dict(
        patch_size=1,
        in_channels=4 * config.in_channels,
        num_layers=config.double_depth,
        num_single_layers=config.single_depth,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim,
        pooled_projection_dim=config.pooled_dim,
        guidance_embeds=config.guidance_embed,
        axes_dims_rope=config.axes_dim,
    )
    ours, theirs = _build(
        diffusers.FluxTransformer2DModel, kwargs, Flux, config, flux_from_diffusers, device, dtype
    )
    g = torch.Generator(device="cpu").manual_seed(1)
    b, n_txt = 1, 512  # FLUX-dev: distilled guidance, no CFG batch; T5 max length 512
    x = torch.randn(b, 16, size, size, generator=g).to(device, dtype)
    t = torch.tensor([500.0], device=device)
    tokens = torch.randn(b, n_txt, 4096, generator=g).to(device, dtype)
    pooled = torch.randn(b, 768, generator=g).to(device, dtype)
    guidance = torch.tensor([3.5], device=device)
    packed = FluxPipeline._pack_latents(x, b, 16, size, size)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, size // 2, size // 2, device, dtype)
    txt_ids = torch.zeros(n_txt, 3, device=device, dtype=dtype)
    cond = Conditioning(tokens=tokens, pooled=pooled, extra={"guidance": guidance})
    return Pair(
        "flux",
        ours,
        theirs,
        lambda: ours(x, t, cond),
        lambda: FluxPipeline._unpack_latents(  # (B, L, 64) -> (B, 16, h, w), as its pipeline does
            theirs(
                hidden_states=packed,
                encoder_hidden_states=tokens,
                pooled_projections=pooled,
                timestep=t / 1000,
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=guidance,
            ).sample,
            8 * size,
            8 * size,
            8,
        ),
        f"x {tuple(x.shape)}, {n_txt} tokens, depth {config.double_depth}+{config.single_depth}",
    )


def zimage_config(width: int | None, depth: int | None) -> Any:
    """The released Z-Image shape with ``width`` (heads of 128) and ``depth`` (main blocks; 1 refiner each)."""
    from latentworks.models.zimage import PRESETS

    config = PRESETS["z-image-turbo"]
    if width is not None:
        config = replace(config, width=width, num_heads=width // 128, ffn_dim=int(width / 3 * 8))
    if depth is not None:
        config = replace(config, depth=depth, refiner_depth=min(config.refiner_depth, 1))
    return config


def qwenimage_config(width: int | None, depth: int | None) -> Any:
    from latentworks.models.qwenimage import PRESETS

    config = PRESETS["qwen-image"]
    if width is not None:
        config = replace(config, width=width, num_heads=width // 128)
    if depth is not None:
        config = replace(config, depth=depth)
    return config


def zimage_diffusers_kwargs(config: Any) -> dict[str, Any]:
    from latentworks.checkpoints.keymaps.zimage_diffusers import zimage_config_to_diffusers

    return {k: v for k, v in zimage_config_to_diffusers(config).items() if not k.startswith("_")}


def qwenimage_diffusers_kwargs(config: Any) -> dict[str, Any]:
    return dict(
        patch_size=config.patch_size,
        in_channels=config.in_channels * config.patch_size**2,
        out_channels=config.output_channels,
        num_layers=config.depth,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim,
        axes_dims_rope=config.axes_dim,
    )


def zimage_inputs(config: Any, device: torch.device, dtype: torch.dtype, size: int) -> tuple[Any, ...]:
    """(x, sigma, Conditioning, their latents list, their t, their caption list): a CFG batch of 2, captions
    of 64 and 40 real tokens (Qwen3 states, padded to 64)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    b, n = 2, 64
    x = torch.randn(b, config.in_channels, size, size, generator=g).to(device, dtype)
    tokens = torch.randn(b, n, config.context_dim, generator=g).to(device, dtype)
    mask = (torch.arange(n)[None] < torch.tensor([64, 40])[:, None]).to(device)
    sigma = torch.tensor([0.75, 0.75], device=device)
    cond = Conditioning(tokens=tokens, mask=mask)
    latents = list(x.unsqueeze(2).unbind(0))
    caps = [tokens[i][mask[i]] for i in range(b)]
    return x, sigma, cond, latents, (1000 - 1000 * sigma) / 1000, caps


def zimage_pair(
    device: torch.device, dtype: torch.dtype, size: int, depth: int | None, width: int | None
) -> Pair:
    import diffusers

    from latentworks.checkpoints.keymaps.zimage_diffusers import zimage_from_diffusers
    from latentworks.models.zimage import ZImage

    config = zimage_config(width, depth)
    ours, theirs = _build(
        diffusers.ZImageTransformer2DModel,
        zimage_diffusers_kwargs(config),
        ZImage,
        config,
        zimage_from_diffusers,
        device,
        dtype,
    )
    x, sigma, cond, latents, t_theirs, caps = zimage_inputs(config, device, dtype, size)
    return Pair(
        "zimage",
        ours,
        theirs,
        lambda: ours(x, sigma, cond),
        lambda: -torch.stack(theirs(latents, t_theirs, caps, return_dict=False)[0]).squeeze(2),
        f"x {tuple(x.shape)}, 64 tokens, width {config.width}, depth {config.depth}+{config.refiner_depth}x2",
    )


def qwenimage_inputs(config: Any, device: torch.device, dtype: torch.dtype, size: int) -> tuple[Any, ...]:
    """(x, t, Conditioning, their kwargs): a CFG batch of 2 with prompts of 64 and 40 tokens (Qwen2.5-VL states)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

    g = torch.Generator(device="cpu").manual_seed(1)
    b, n, c = 2, 64, config.in_channels
    x = torch.randn(b, c, size, size, generator=g).to(device, dtype)
    tokens = torch.randn(b, n, config.context_dim, generator=g).to(device, dtype)
    mask = (torch.arange(n)[None] < torch.tensor([64, 40])[:, None]).to(device)
    t = torch.tensor([750.0, 750.0], device=device)
    kwargs = dict(
        hidden_states=QwenImagePipeline._pack_latents(x, b, c, size, size),
        encoder_hidden_states=tokens,
        encoder_hidden_states_mask=mask,
        timestep=t / 1000,
        img_shapes=[[(1, size // 2, size // 2)]] * b,
        return_dict=False,
    )
    return x, t, Conditioning(tokens=tokens, mask=mask), kwargs


def qwenimage_pair(
    device: torch.device, dtype: torch.dtype, size: int, depth: int | None, width: int | None
) -> Pair:
    import diffusers
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

    from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_from_diffusers
    from latentworks.models.qwenimage import QwenImage

    config = qwenimage_config(width, depth)
    ours, theirs = _build(
        diffusers.QwenImageTransformer2DModel,
        qwenimage_diffusers_kwargs(config),
        QwenImage,
        config,
        qwenimage_from_diffusers,
        device,
        dtype,
    )
    x, t, cond, kwargs = qwenimage_inputs(config, device, dtype, size)
    return Pair(
        "qwenimage",
        ours,
        theirs,
        lambda: ours(x, t, cond),
        lambda: QwenImagePipeline._unpack_latents(theirs(**kwargs)[0], 8 * size, 8 * size, 8)[:, :, 0],
        f"x {tuple(x.shape)}, 64 tokens, width {config.width}, depth {config.depth}",
    )


def make_pair(
    family: str,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    depth: int | None,
    width: int | None = None,
) -> Pair:
    if family == "zimage":
        return zimage_pair(device, dtype, size, depth, width)
    if family == "qwenimage":
        return qwenimage_pair(device, dtype, size, depth, width)
    if family in ("sd15", "sdxl"):
        return sd_unet_pair(family, device, dtype, size, depth)
    if family == "sd3":
        return sd3_pair(device, dtype, size, depth)
    return flux_pair(device, dtype, size, depth)


# ---------------------------------------------------------------- full SD1.5 generation


def full_generation(pair: Pair, device: torch.device, dtype: torch.dtype, steps: int, resolution: int):
    """(ours_s, theirs_s, ours_peak, theirs_peak, max |image difference|) for one 20-step CFG image each."""
    import diffusers

    from latentworks.checkpoints.keymaps.sd_diffusers import vae_from_diffusers
    from latentworks.diffusion.denoisers import DiscreteModelSampling, make_denoiser
    from latentworks.diffusion.guidance import CFGDenoiser, GuidedCond
    from latentworks.diffusion.samplers import sample_euler
    from latentworks.diffusion.schedules import get_sigmas
    from latentworks.models.autoencoder import PRESETS as VAE_PRESETS
    from latentworks.models.autoencoder import Autoencoder
    from latentworks.pipelines.memory import decode_latents

    vae, ref_vae = _build(
        diffusers.AutoencoderKL, SD_VAE, Autoencoder, VAE_PRESETS["sd"], vae_from_diffusers, device, dtype
    )
    scale, guidance, h = 0.18215, 7.5, resolution // 8
    g = torch.Generator(device="cpu").manual_seed(2)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)  # (prompt, negative prompt)
    noise = torch.randn(1, 4, h, h, generator=g).to(device, torch.float32)
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="linspace"
    )
    model_sampling = DiscreteModelSampling()

    def ours() -> torch.Tensor:
        sigmas = get_sigmas(model_sampling, "normal", steps).to(device)
        den = CFGDenoiser(make_denoiser(pair.ours, "eps", model_sampling), guidance)
        cond = GuidedCond(Conditioning(tokens=ctx[:1]), Conditioning(tokens=ctx[1:]))
        z = sample_euler(den, noise * sigmas[0], sigmas, cond=cond)
        return decode_latents(vae, z / scale)

    def theirs() -> torch.Tensor:
        scheduler.set_timesteps(steps, device=device)
        latents = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps = pair.theirs(x_in.to(dtype), t, encoder_hidden_states=ctx).sample.float()
            eps_c, eps_u = eps.chunk(2)
            latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        return ref_vae.decode((latents / scale).to(dtype)).sample.float()

    results: dict[str, Any] = {}
    for name, fn in (("ours", ours), ("theirs", theirs)):  # one run each: minutes on a CPU
        with torch.no_grad():
            gc.collect()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                t0 = time.perf_counter()
                image = fn()
                torch.cuda.synchronize(device)
                seconds = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated(device) - before
            else:
                with PeakRSS() as p:
                    t0 = time.perf_counter()
                    image = fn()
                    seconds = time.perf_counter() - t0
                peak = p.peak - p.start
        results[name] = (seconds, peak, image)
        print(f"  full {name}: {seconds:.1f} s, +{peak / 2**20:.0f} MiB", flush=True)
    diff = (results["ours"][2] - results["theirs"][2]).abs().max().item()
    return results["ours"][0], results["theirs"][0], results["ours"][1], results["theirs"][1], diff


# ---------------------------------------------------------------- peak RSS, one model per subprocess

RSS_FAMILIES = ("zimage", "qwenimage")


def _maxrss() -> int:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over from the parent
    across fork and exec, so a child of a large parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def rss_child(family: str, side: str, folder: str, width: int | None, depth: int | None, size: int) -> None:
    """Load one model from ``folder`` (a diffusers save) the way its library does, run one forward, print JSON:
    resident set after imports, after loading, and the peak (bytes)."""
    import json
    from pathlib import Path

    torch.set_grad_enabled(False)
    device, dtype = torch.device("cpu"), torch.float32
    config = zimage_config(width, depth) if family == "zimage" else qwenimage_config(width, depth)
    if side == "theirs":
        import diffusers

        cls = (
            diffusers.ZImageTransformer2DModel
            if family == "zimage"
            else diffusers.QwenImageTransformer2DModel
        )
        base = _rss()
        theirs = cls.from_pretrained(folder, torch_dtype=dtype).eval()
        loaded = _rss()
        if family == "zimage":
            _, _, _, latents, t, caps = zimage_inputs(config, device, dtype, size)
            theirs(latents, t, caps, return_dict=False)
        else:
            theirs(**qwenimage_inputs(config, device, dtype, size)[3])
    else:
        from latentworks.families.load import open_weights

        if family == "zimage":
            from latentworks.checkpoints.keymaps.zimage_diffusers import zimage_from_diffusers as convert
            from latentworks.models.zimage import ZImage as ours_cls
        else:
            from latentworks.checkpoints.keymaps.qwenimage_diffusers import (
                qwenimage_from_diffusers as convert,
            )
            from latentworks.models.qwenimage import QwenImage as ours_cls  # type: ignore[assignment]
        base = _rss()
        with torch.device("meta"):
            ours = ours_cls(config)
        weights = open_weights(Path(folder) / "diffusion_pytorch_model.safetensors")
        load_into(ours, convert(weights, config), dtype=dtype, device=device)
        del weights
        loaded = _rss()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, config.in_channels, size, size, generator=g)
        tokens = torch.randn(2, 64, config.context_dim, generator=g)
        mask = torch.arange(64)[None] < torch.tensor([64, 40])[:, None]
        t = torch.tensor([0.75, 0.75]) if family == "zimage" else torch.tensor([750.0, 750.0])
        ours.eval()(x, t, Conditioning(tokens=tokens, mask=mask))
    print(json.dumps({"base": base, "loaded": loaded, "peak": _maxrss()}))


def peak_rss(family: str, theirs: torch.nn.Module, width: int | None, depth: int | None, size: int):
    """{side: {base, loaded, peak}} from one subprocess per side over ``theirs`` saved with save_pretrained."""
    import json
    import subprocess
    import sys
    import tempfile

    out: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        theirs.save_pretrained(folder)  # type: ignore[operator]
        for side in ("ours", "theirs"):
            cmd = [sys.executable, __file__, "--rss-child", family, side, folder, "--size", str(size)]
            cmd += [] if width is None else ["--width", str(width)]
            cmd += [] if depth is None else ["--depth", str(depth)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[side] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA"
    )
    ap.add_argument(
        "--families", default=None, help=f"comma list of {FAMILIES}; default: sd15 on CPU, all on CUDA"
    )
    ap.add_argument(
        "--depth", type=int, default=None, help="reduce depth (CPU smoke runs); Z-Image/Qwen-Image on CPU: 4"
    )
    ap.add_argument(
        "--width", type=int, default=None, help="Z-Image/Qwen-Image width (heads of 128); CPU default 1024"
    )
    ap.add_argument("--rss", action="store_true", help="also peak RSS per model, in subprocesses (CPU)")
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time (shared CPUs)")
    ap.add_argument("--rss-child", nargs=3, metavar=("FAMILY", "SIDE", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=None, help="latent side; default 32 on CPU, 64/128 on CUDA")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="also time a 20-step 512x512 SD1.5 generation")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=512, help="image side for --full")
    args = ap.parse_args()
    if args.cpu_time:
        CLOCK[0] = time.process_time
    if args.rss_child:
        rss_child(*args.rss_child, args.width, args.depth, args.size or 32)
        return

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run on a GPU machine or use --device cpu")
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    families = args.families.split(",") if args.families else (list(FAMILIES) if cuda else list(CPU_DEFAULT))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; choose from {FAMILIES}")
    mid = ("sd15", *RSS_FAMILIES)  # what runs on CPU at full (SD1.5) or mid size without --depth
    if not cuda and args.depth is None and (skipped := [f for f in families if f not in mid]):
        print(
            f"skipped on CPU (full size needs a GPU; use --device cuda, or --depth N for a smoke run): {skipped}"
        )
        families = [f for f in families if f in mid]
    if not cuda:
        print("GPU path (--device cuda --dtype bf16 for sd15, sdxl, sd3, flux): skipped on this CPU run")

    torch.set_grad_enabled(False)
    machine = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"# vs diffusers: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine}, torch {torch.__version__}, dtype {dtype}"
        + (", CPU time" if args.cpu_time else ", wall clock")
    )
    rows: list[tuple[str, float, float, str]] = []

    def row(name: str, ours: float, theirs: float, unit: str) -> None:
        rows.append((name, ours, theirs, unit))
        print(
            f"  {name}: ours {ours:.3f} {unit}, diffusers {theirs:.3f} {unit}, ratio {ours / theirs:.2f}",
            flush=True,
        )

    for family in families:
        size = args.size or (32 if not cuda else (64 if family == "sd15" else 128))
        width, depth = args.width, args.depth
        if family in RSS_FAMILIES and not cuda:
            width, depth = width or MID_WIDTH, depth or MID_DEPTH
        pair = make_pair(family, device, dtype, size, depth, width)
        with torch.no_grad():
            ref = pair.theirs_call().float()
            diff = ((pair.ours_call().float() - ref).norm() / ref.norm()).item()
            del ref
        ours_s, theirs_s, a, b = interleaved(pair.ours_call, pair.theirs_call, args.runs, device)
        print(
            f"  {family} forward s, ours {[round(v, 3) for v in a]}, diffusers {[round(v, 3) for v in b]}",
            flush=True,
        )
        mem_ours, mem_theirs = extra_memory(pair.ours_call, device), extra_memory(pair.theirs_call, device)
        row(f"{family} forward ({pair.shape})", ours_s, theirs_s, "s")
        row(f"{family} forward peak extra memory", mem_ours / 2**20, mem_theirs / 2**20, "MiB")
        print(f"  {family}: relative difference of outputs (ours vs diffusers) {diff:.1e}")
        if args.rss and not cuda and family in RSS_FAMILIES:
            rss = peak_rss(family, pair.theirs, width, depth, size)
            o, t = rss["ours"], rss["theirs"]
            row(f"{family} load + forward peak RSS (process)", o["peak"] / 2**20, t["peak"] / 2**20, "MiB")
            row(
                f"{family} load + forward peak RSS over imports",
                (o["peak"] - o["base"]) / 2**20,
                (t["peak"] - t["base"]) / 2**20,
                "MiB",
            )
        if args.full and family == "sd15":
            res = args.resolution
            o, t, po, pt, image_diff = full_generation(pair, device, dtype, args.steps, res)
            row(f"sd15 {args.steps}-step {res}x{res} CFG generation + VAE decode", o, t, "s")
            row("sd15 generation peak extra memory", po / 2**20, pt / 2**20, "MiB")
            print(f"  sd15 full generation: max |image difference| {image_diff:.1e}")
        del pair
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    print()
    print("| measurement | ours | diffusers | ours / diffusers |")
    print("|---|---|---|---|")
    for name, o, t, unit in rows:
        print(f"| {name} | {o:.3f} {unit} | {t:.3f} {unit} | {o / t:.2f} |")


if __name__ == "__main__":
    main()
