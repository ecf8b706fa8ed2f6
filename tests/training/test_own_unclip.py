"""Our own unCLIP (issue 26): the decoder equals its base at step 0, the contrastive encoder learns a toy set,
the prior trains on the one loop and samples with guidance, the decoder trains with ``--task unclip``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import HashTextEncoder, make_latent_cache  # noqa: E402

from latentworks.data.arrays import ArrayDataset  # noqa: E402
from latentworks.diffusion.conditioning import Conditioning  # noqa: E402
from latentworks.models.emoji_prior import PRESETS as PRIOR_PRESETS  # noqa: E402
from latentworks.models.image_encoder import PRESETS as ENC_PRESETS  # noqa: E402
from latentworks.models.image_encoder import ImageEncoder, contrastive_loss  # noqa: E402
from latentworks.models.own_unclip import decoder_config, decoder_from_base  # noqa: E402
from latentworks.models.unet import CLASS_INPUT_KEY, UNet  # noqa: E402
from latentworks.models.unet import PRESETS as UNET_PRESETS  # noqa: E402
from latentworks.pipelines.own_unclip import prior_model_sampling, sample_prior  # noqa: E402
from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion  # noqa: E402
from latentworks.training.unclip import (  # noqa: E402
    EncoderTrainConfig,
    PriorTrainConfig,
    embed_dataset,
    load_encoder_run,
    load_prior_run,
    train_image_encoder,
    train_prior,
)

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (240, 220, 20)}


def _perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def test_decoder_at_step_0_equals_its_base_with_or_without_an_image() -> None:
    torch.manual_seed(0)
    base = _perturbed(UNet(UNET_PRESETS["tiny"])).eval()
    dec = decoder_from_base(base, 8).eval()
    assert dec.config.pooled_dim == 16 and dec.config.num_time_ids == 0
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10.0, 700.0])
    cond = Conditioning(tokens=torch.randn(2, 3, UNET_PRESETS["tiny"].context_dim))
    with torch.no_grad():
        want = base(x, t, cond)
        plain = dec(x, t, cond)
        with_image = dec(x, t, cond.with_extra(**{CLASS_INPUT_KEY: torch.randn(2, 16) * 3}))
    assert torch.equal(plain, want) and torch.equal(with_image, want)
    # One gradient step on the new path makes the image matter (the zero init does not block learning).
    dec.train()
    img = cond.with_extra(**{CLASS_INPUT_KEY: torch.randn(2, 16)})
    dec(x, t, img).pow(2).mean().backward()
    assert dec.add_embed.fc2.weight.grad is not None and dec.add_embed.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="already reads a pooled vector"):
        decoder_config(UNET_PRESETS["sdxl"], 8)


def test_a_wrong_width_image_embedding_is_a_clear_error() -> None:
    dec = decoder_from_base(UNet(UNET_PRESETS["tiny"]), 8)
    cond = Conditioning(tokens=torch.randn(1, 3, 24)).with_extra(**{CLASS_INPUT_KEY: torch.randn(1, 10)})
    with pytest.raises(ValueError, match=r"must be \(1, 16\)"):
        dec(torch.randn(1, 4, 8, 8), torch.tensor([5.0]), cond)


def _toy_dataset(path: Path, n: int = 32, size: int = 8) -> Path:
    """Flat colour squares on white whose caption names the colour (the caption determines the image)."""
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    imgs = np.full((n, size, size, 3), 255, np.uint8)
    caps = []
    for i in range(n):
        name = names[i % len(names)]
        y, x = rng.integers(0, size // 2, 2)
        imgs[i, y : y + size // 2, x : x + size // 2] = COLOURS[name]
        caps.append(f"{name} square")
    ArrayDataset(imgs, caps, {"heldout": np.zeros(n, bool)}).save_npz(path)
    return path


def test_contrastive_loss_is_low_for_matching_pairs() -> None:
    e = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale = torch.tensor(np.log(20.0))
    assert contrastive_loss(e, e, scale) < 0.5 * contrastive_loss(e, e.roll(1, 0), scale)


def test_encoder_learns_a_toy_set_and_the_prior_trains_and_samples(tmp_path: Path) -> None:
    data = _toy_dataset(tmp_path / "toy.npz")
    enc_text = HashTextEncoder(dim=16)
    cfg = EncoderTrainConfig(
        data=data, out=tmp_path / "enc", model=ENC_PRESETS["tiny"], steps=60, batch_size=8, lr=3e-3,
        progress=False,
    )  # fmt: skip
    r = train_image_encoder(cfg, text_encoder=enc_text)
    assert r.step == 60
    first, last = float(np.mean(r.losses[:5])), float(np.mean(r.losses[-10:]))
    assert last < 0.6 * first, (first, last)
    enc = load_encoder_run(tmp_path / "enc")
    assert isinstance(enc, ImageEncoder) and enc.embed_std.min() > 0
    # Retrieval: each colour's caption is nearest to images of that colour.
    from latentworks.data.arrays import images_to_tensor, load_npz

    toy = load_npz(data)
    img = embed_dataset(enc, images_to_tensor(toy.images))
    names = list(COLOURS)
    with torch.no_grad():
        txt = enc.encode_text(enc_text.encode([f"{c} square" for c in names]).pooled)
    best = (img @ txt.T).argmax(1)
    assert (best == torch.arange(len(toy)) % len(names)).float().mean() == 1.0

    # The prior: a few steps on the one loop, then sampling through the project's samplers.
    pcfg = PriorTrainConfig(
        data=data, encoder_run=tmp_path / "enc", out=tmp_path / "prior",
        model=dataclasses.replace(PRIOR_PRESETS["tiny"]), steps=4, batch_size=8, progress=False,
    )  # fmt: skip
    pr = train_prior(pcfg, text_encoder=enc_text)
    assert pr.step == 4 and all(np.isfinite(pr.losses))
    prior, meta = load_prior_run(tmp_path / "prior")
    assert meta["prediction"] == "flow"
    ms = prior_model_sampling(meta["sampling"])
    cond, uncond = enc_text.encode(["red square", "blue square"]), enc_text.encode(["", ""])
    a = sample_prior(prior, ms, cond, uncond, [1, 2], steps=3, guidance=3.0)
    b = sample_prior(prior, ms, cond, uncond, [1, 2], steps=3, guidance=3.0)
    assert a.shape == (2, 8) and torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.equal(a, b)
    single = sample_prior(prior, ms, enc_text.encode(["blue square"]), enc_text.encode([""]), [2], steps=3,
                          guidance=3.0)  # fmt: skip
    assert torch.allclose(single[0], a[1], atol=1e-5)  # sample i is a single run with seed i

    # CFG, against a one-step Euler oracle written out here: x0 = x - sigma * (v_u + g (v_c - v_u)).
    _perturbed(prior, seed=3)
    from latentworks.diffusion.schedules import get_sigmas

    sigma = float(get_sigmas(ms, "simple", 1)[0])
    x = torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]) * sigma
    t = ms.timestep(torch.full((2,), sigma))
    with torch.no_grad():
        v_c, v_u = prior(x, t, cond), prior(x, t, uncond)
    for g in (1.0, 3.0):
        want = torch.nn.functional.normalize(x - sigma * (v_u + g * (v_c - v_u)), dim=-1)
        got = sample_prior(prior, ms, cond, uncond if g != 1 else None, [1, 2], steps=1, guidance=g)
        assert torch.allclose(got, want, atol=1e-5), g
    assert not torch.allclose(
        sample_prior(prior, ms, cond, uncond, [1, 2], steps=1, guidance=3.0),
        sample_prior(prior, ms, cond, None, [1, 2], steps=1, guidance=1.0),
    )


def test_decoder_trains_on_the_loop_with_task_unclip(tmp_path: Path) -> None:
    text = HashTextEncoder(dim=24)
    n = 16
    data = _toy_dataset(tmp_path / "toy.npz", n=n)
    from latentworks.data.arrays import load_npz

    caps = load_npz(data).captions
    cache = make_latent_cache(tmp_path / "lat.safetensors", n=n, channels=4, size=8)
    from latentworks.pipelines.latents import save_latent_cache

    save_latent_cache(tmp_path / "lat.safetensors", cache.mean, cache.std, list(caps), {"vae_run": ""})
    common = dict(
        latents=tmp_path / "lat.safetensors", model=UNET_PRESETS["tiny"], batch_size=4, progress=False,
        sample_every=100, checkpoint_every=100, log_every=1,
    )  # fmt: skip
    train_diffusion(DiffusionTrainConfig(out=tmp_path / "base", steps=1, **common), text_encoder=text)
    train_image_encoder(
        EncoderTrainConfig(data=data, out=tmp_path / "enc", model=ENC_PRESETS["tiny"], steps=2, batch_size=4,
                           progress=False),
        text_encoder=HashTextEncoder(dim=16),
    )  # fmt: skip
    cfg = DiffusionTrainConfig(
        out=tmp_path / "dec", steps=3, task="unclip", init_from=tmp_path / "base", image_encoder=tmp_path / "enc",
        image_data=data, lr=1e-3, **{k: v for k, v in common.items() if k != "model"},
    )  # fmt: skip
    r = train_diffusion(cfg, text_encoder=text)
    assert r.step == 3 and all(np.isfinite(r.losses))
    from latentworks.pipelines.export import load_diffusion_run

    rc, net = load_diffusion_run(tmp_path / "dec")
    assert rc["model"]["pooled_dim"] == 16 and rc["model"]["num_time_ids"] == 0
    assert net.add_embed.fc2.weight.abs().sum() > 0  # the image path has learned something
    with pytest.raises(ValueError, match="needs the image encoder run"):
        DiffusionTrainConfig(out=tmp_path / "x", task="unclip", **common)
    other = _toy_dataset(tmp_path / "other.npz", n=n + 4)
    with pytest.raises(ValueError, match="the data of the latent cache"):
        train_diffusion(dataclasses.replace(cfg, out=tmp_path / "y", image_data=other), text_encoder=text)


def test_the_image_path_learns_at_its_own_learning_rate(tmp_path: Path) -> None:
    """embed_lr_scale=10: AdamW's first step moves each weight by about lr (its update is lr * g / |g|),
    so one step moves the new image path's weights 10x as far as with scale 1, and every pretrained weight
    exactly as far."""
    text = HashTextEncoder(dim=24)
    n = 8
    data = _toy_dataset(tmp_path / "toy.npz", n=n)
    from latentworks.data.arrays import load_npz
    from latentworks.pipelines.export import load_diffusion_run
    from latentworks.pipelines.latents import save_latent_cache

    cache = make_latent_cache(tmp_path / "lat.safetensors", n=n, channels=4, size=8)
    save_latent_cache(tmp_path / "lat.safetensors", cache.mean, cache.std, list(load_npz(data).captions), {})
    common = dict(
        latents=tmp_path / "lat.safetensors", batch_size=4, progress=False, sample_every=100,
        checkpoint_every=100, log_every=1, caption_dropout=0.0,
    )  # fmt: skip
    train_diffusion(
        DiffusionTrainConfig(out=tmp_path / "base", steps=1, model=UNET_PRESETS["tiny"], **common),
        text_encoder=text,
    )
    train_image_encoder(
        EncoderTrainConfig(data=data, out=tmp_path / "enc", model=ENC_PRESETS["tiny"], steps=1, batch_size=4,
                           progress=False),
        text_encoder=HashTextEncoder(dim=16),
    )  # fmt: skip
    moved = {}
    for scale in (1.0, 10.0):
        out = tmp_path / f"dec{scale:g}"
        cfg = DiffusionTrainConfig(
            out=out, steps=1, task="unclip", init_from=tmp_path / "base", image_encoder=tmp_path / "enc",
            image_data=data, lr=1e-3, ema_decay=0.0, embed_lr_scale=scale, **common,
        )  # fmt: skip
        train_diffusion(cfg, text_encoder=text)
        moved[scale] = dict(load_diffusion_run(out)[1].state_dict())
    _, base = load_diffusion_run(tmp_path / "base")
    new = moved[10.0]["add_embed.fc2.weight"].abs().max() / moved[1.0]["add_embed.fc2.weight"].abs().max()
    assert 9.0 < float(new) < 11.0  # fc2 starts at zero: its change is the weight
    for name, p in base.state_dict().items():
        assert torch.allclose(moved[1.0][name] - p, moved[10.0][name] - p, atol=1e-7), name
    with pytest.raises(ValueError, match="task unclip only"):
        DiffusionTrainConfig(out=tmp_path / "x", embed_lr_scale=2.0, **common)


def test_a_prior_with_text_embedding_reads_the_encoders_text_embedding() -> None:
    """text_embedding=True: the conditioning carries encode_text(pooled) * sqrt(D) (computed here from the
    encoder's own layer), the prior's output depends on it, and a conditioning without it is a clear error."""
    import math

    from latentworks.diffusion.conditioning import Conditioning
    from latentworks.models.emoji_prior import EmbeddingPrior, add_text_embedding
    from latentworks.models.image_encoder import ImageEncoder

    enc = _perturbed(ImageEncoder(ENC_PRESETS["tiny"]), seed=5)
    d = enc.config.embed_dim
    pooled = torch.randn(3, enc.config.text_dim, generator=torch.Generator().manual_seed(0))
    cond = add_text_embedding(Conditioning(tokens=torch.zeros(3, 1, 4), pooled=pooled), enc)
    with torch.no_grad():
        want = torch.nn.functional.normalize(enc.text_proj(pooled), dim=-1) * math.sqrt(d)
    assert torch.allclose(cond.extra["text_embedding"], want, atol=1e-6)
    prior = _perturbed(
        EmbeddingPrior(dataclasses.replace(PRIOR_PRESETS["tiny"], text_dim=enc.config.text_dim, embed_dim=d,
                                           text_embedding=True)), seed=6,
    )  # fmt: skip
    x, t = torch.randn(3, d, generator=torch.Generator().manual_seed(1)), torch.full((3,), 500.0)
    with torch.no_grad():
        a = prior(x, t, cond)
        b = prior(x, t, cond.with_extra(text_embedding=cond.extra["text_embedding"].roll(1, 0)))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="add_text_embedding"):
        prior(x, t, Conditioning(tokens=torch.zeros(3, 1, 4), pooled=pooled))
