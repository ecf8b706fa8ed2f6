"""Our own unCLIP from the command line on a tiny random model folder: ``variations`` through our image encoder,
``unclip`` text -> prior -> decoder and interpolation, ``info --model`` listing the stages, and a folder without
the prior (variations work, text -> image names the missing stage)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.cli import main
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.models.autoencoder import PRESETS as VAE_PRESETS
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.emoji_prior import PRESETS as PRIOR_PRESETS
from latentworks.models.emoji_prior import EmbeddingPrior
from latentworks.models.image_encoder import PRESETS as ENC_PRESETS
from latentworks.models.image_encoder import ImageEncoder
from latentworks.models.own_unclip import decoder_from_base
from latentworks.models.unclip import ImageEmbeddingAugmentor
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import UNet
from latentworks.pipelines import Pipeline
from latentworks.pipelines.loading import save_model_folder
from latentworks.pipelines.own_unclip import add_own_unclip_stages, image_to_tensor

D = 8


def _perturb(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(with prior, without prior): one tiny decoder, encoder and prior, MiniLM text."""
    torch.manual_seed(0)
    base = UNet(dataclasses.replace(UNET_PRESETS["tiny"], context_dim=384))
    decoder = _perturb(decoder_from_base(base, D), 1)
    with torch.no_grad():  # an image path that matters (a trained one is no longer zero)
        decoder.add_embed.fc2.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    root = tmp_path_factory.mktemp("own-unclip")
    full = save_model_folder(
        root / "full", name="tiny-unclip", architecture="unet", denoiser=decoder, prediction="flow",
        sampling={"kind": "flow", "shift": 1.0}, vae=Autoencoder(VAE_PRESETS["tiny"]),
        latent_format=LatentFormat(channels=4, scale_factor=1.0), text_encoder={"kind": "minilm", "max_length": 8},
        resolution=(16, 16), defaults={"steps": 2, "guidance": 2.0, "sampler": "euler", "scheduler": "simple"},
    )  # fmt: skip
    enc = _perturb(ImageEncoder(dataclasses.replace(ENC_PRESETS["tiny"], text_dim=384)), 2)
    enc.embed_mean.copy_(torch.linspace(-0.1, 0.1, D))
    enc.embed_std.copy_(torch.full((D,), 0.3))
    prior = _perturb(EmbeddingPrior(dataclasses.replace(PRIOR_PRESETS["tiny"], text_dim=384)), 3)
    no_prior = root / "no-prior"
    shutil.copytree(full, no_prior)
    add_own_unclip_stages(full, enc, prior, defaults={"prior_steps": 2})
    add_own_unclip_stages(no_prior, enc)
    return full, no_prior


def _image(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path)
    return path


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_variations_use_our_encoder_and_decoder(folders: tuple[Path, Path], tmp_path: Path) -> None:
    _, no_prior = folders  # variations need no prior
    img = _image(tmp_path / "p.png")
    argv = ["variations", str(img), "--model", str(no_prior), "--count", "2", "--seed", "5"]
    argv += ["--noise-augmentation", "0.2", "--steps", "2", "-o", str(tmp_path / "out")]
    assert main(argv) == 0
    written = _pngs(tmp_path / "out")
    assert [p.name for p in written] == ["p-variation-5.png", "p-variation-6.png"]

    # The same images from the parts composed here: encoder -> augmentor (seed i) -> pipeline.
    enc = ImageEncoder(dataclasses.replace(ENC_PRESETS["tiny"], text_dim=384))
    from latentworks.checkpoints.io import load_state_dict

    enc.load_state_dict(load_state_dict(no_prior / "image_encoder.safetensors"))
    pixels = torch.from_numpy(
        np.asarray(Image.open(img).resize((8, 8), Image.Resampling.LANCZOS), dtype=np.float32) / 127.5 - 1
    ).permute(2, 0, 1)[None]
    assert torch.allclose(pixels, image_to_tensor(Image.open(img), 8))
    with torch.no_grad():
        e = enc.encode_image(pixels)
    aug = ImageEmbeddingAugmentor(enc.embed_mean, enc.embed_std)
    rows = [
        aug(e, round(999 * 0.2), torch.randn(1, D, generator=torch.Generator().manual_seed(s)))
        for s in (5, 6)
    ]
    want = Pipeline.from_pretrained(no_prior)(
        "", seed=5, batch=2, steps=2, class_input=torch.cat(rows)
    ).images
    for path, im in zip(written, want, strict=True):
        assert np.abs(np.asarray(Image.open(path)).astype(int) - np.asarray(im).astype(int)).max() <= 1
    plain = Pipeline.from_pretrained(no_prior)("", seed=5, batch=1, steps=2).images[0]
    assert np.abs(np.asarray(Image.open(written[0])).astype(int) - np.asarray(plain).astype(int)).max() > 1


def test_text_to_image_and_interpolation(folders: tuple[Path, Path], tmp_path: Path) -> None:
    full, _ = folders
    out = tmp_path / "t"
    assert main(["unclip", "red apple", "--model", str(full), "--count", "2", "-o", str(out)]) == 0
    assert [p.name for p in _pngs(out)] == ["unclip-0-00.png", "unclip-0-01.png"]
    # The Pipeline-shaped wrapper (what scripts/eval_own_unclip.py evaluates) gives the same images.
    from latentworks.pipelines.own_unclip import UnclipTextToImage, load_own_unclip

    pipe = Pipeline.from_pretrained(full)
    want = UnclipTextToImage(pipe, load_own_unclip(full))("red apple", seed=0, batch=2).images
    for path, im in zip(_pngs(out), want, strict=True):
        assert np.abs(np.asarray(Image.open(path)).astype(int) - np.asarray(im).astype(int)).max() <= 1
    img = _image(tmp_path / "p.png")
    out2 = tmp_path / "i"
    argv = [
        "unclip",
        "--image",
        str(img),
        "--to",
        "cat face",
        "--frames",
        "3",
        "--model",
        str(full),
        "-o",
        str(out2),
    ]
    assert main(argv) == 0
    frames = [np.asarray(Image.open(p)).astype(int) for p in _pngs(out2)]
    assert len(frames) == 3 and np.abs(frames[0] - frames[2]).max() > 1


def test_info_lists_the_stages(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    full, no_prior = folders
    assert main(["info", "--model", str(full)]) == 0
    assert "unCLIP: image encoder -> prior -> decoder" in capsys.readouterr().out
    assert main(["info", "--model", str(no_prior)]) == 0
    assert "no prior" in capsys.readouterr().out


def test_missing_prior_and_wrong_models_are_clear_errors(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, no_prior = folders
    assert main(["unclip", "red apple", "--model", str(no_prior), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no prior stage" in err and "variations" in err
    assert main(["unclip", "red apple", "--model", "default", "-o", str(tmp_path)]) == 2
    assert "not one of our unCLIP model folders" in capsys.readouterr().err
    from latentworks.pipelines.own_unclip import load_own_unclip

    parts = load_own_unclip(no_prior)
    with pytest.raises(ValueError, match=r"must be \(N, 8\)"):
        parts.class_input(torch.zeros(1, 12))


@pytest.mark.slow  # about 15 s: three stages, an export and MiniLM
def test_train_unclip_runs_every_stage_and_writes_a_model_folder(tmp_path: Path) -> None:
    """Two steps per stage on 16 tiny 32 px images, from a tiny text-to-image folder; MiniLM for the text."""
    from latentworks.data.arrays import ArrayDataset

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    held = np.zeros(20, bool)
    held[:4] = True
    ArrayDataset(imgs, [f"thing {i % 5}" for i in range(20)], {"heldout": held}).save_npz(tmp_path / "d.npz")
    base = save_model_folder(
        tmp_path / "base", name="tiny", architecture="unet",
        denoiser=UNet(dataclasses.replace(UNET_PRESETS["tiny"], context_dim=384)), prediction="flow",
        sampling={"kind": "flow", "shift": 1.0}, vae=Autoencoder(VAE_PRESETS["tiny"]),
        latent_format=LatentFormat(channels=4, scale_factor=1.0), text_encoder={"kind": "minilm", "max_length": 8},
        resolution=(32, 32), defaults={"steps": 2},
    )  # fmt: skip
    # The latent cache's scale and shift come from the data: give the base folder the same (as the default
    # model's match emoji-32.npz), and train-unclip reuses the cache it finds in OUT.
    import json

    from latentworks.pipelines.latents import cache_latents

    cache = cache_latents(base, tmp_path / "d.npz", tmp_path / "u" / "latents.safetensors", progress=False)
    meta = json.loads((base / "model.json").read_text())
    meta["latent_format"].update(scale_factor=cache.scale, shift_factor=cache.shift)
    (base / "model.json").write_text(json.dumps(meta))
    argv = ["train-unclip", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "u"), "--init-from"]
    argv += [str(base), "--embed-dim", "16", "--encoder-steps", "2", "--encoder-batch-size", "4"]
    argv += [
        "--prior-steps",
        "2",
        "--prior-batch-size",
        "4",
        "--decoder-steps",
        "2",
        "--decoder-batch-size",
        "4",
    ]
    assert main(argv) == 0
    model = tmp_path / "u" / "model"
    from latentworks.pipelines.own_unclip import load_own_unclip

    parts = load_own_unclip(model)
    assert (
        parts.dim == 16
        and parts.prior is not None
        and parts.stages() == ["image encoder", "prior", "decoder"]
    )
    assert parts.prior.config.text_embedding  # the default prior reads the encoder's text embedding too
    from latentworks.models.text.minilm import MiniLMTextEncoder

    e = parts.embed_text(MiniLMTextEncoder(max_length=8), ["red square", "blue"], 0, steps=2)
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    pipe = Pipeline.from_pretrained(model)
    assert pipe.model.denoiser_net.config.pooled_dim == 32
    assert (
        main(
            [
                "train-unclip",
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path / "v"),
                "--stages",
                "prior",
            ]
        )
        == 2
    )
