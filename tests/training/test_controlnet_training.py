"""ControlNet training for our own U-Nets (training.controlnet through training.diffusion.train_diffusion)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import HashTextEncoder, make_square_images  # noqa: E402

from latentworks.checkpoints.io import load_state_dict  # noqa: E402
from latentworks.diffusion.conditioning import Conditioning  # noqa: E402
from latentworks.diffusion.objective import DiffusionObjective  # noqa: E402
from latentworks.families.controlnet import load_controlnet  # noqa: E402
from latentworks.models.controlnet import randomize_zero_convs  # noqa: E402
from latentworks.models.unet import UNet, UNetConfig  # noqa: E402
from latentworks.pipelines.latents import save_latent_cache  # noqa: E402
from latentworks.training.controlnet import ControlNetTrainSpec, controlnet_from_unet, load_hints  # noqa: E402
from latentworks.training.diffusion import DiffusionTrainConfig, load_init_source, train_diffusion  # noqa: E402
from latentworks.training.resume import ResumeError  # noqa: E402

# head_dim 8 and 4 GroupNorm groups: neither is what SD's shape rules would guess, so loading the saved file
# right proves the config travels with it.
UNET = UNetConfig(
    in_channels=4,
    out_channels=4,
    channels=(16, 32),
    layers_per_block=1,
    transformer_depth=(0, 1),
    mid_transformer_depth=1,
    num_heads=None,
    head_dim=8,
    context_dim=16,
    norm_groups=4,
)
SIZE = 16  # images; latents are 8 x 8, so the hint encoder halves once


@pytest.fixture
def data(tmp_path):
    """A 24-image dataset (20 train) and a latent cache of its train split whose latents are the images
    downsampled (so the edges say something about them)."""
    npz = tmp_path / "squares.npz"
    make_square_images(npz, n=24, size=SIZE)
    from latentworks.data.folder import load_dataset

    ds = load_dataset(npz, size=SIZE, split="train")
    img = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (20, 3, 16, 16)
    small = torch.nn.functional.avg_pool2d(img, 2)
    mean = torch.cat([small, small[:, :1]], dim=1)  # (20, 4, 8, 8)
    meta = {"vae_run": "", "data": str(npz), "split": "train", "resolution": SIZE}
    cache = save_latent_cache(
        tmp_path / "lat.safetensors", mean, torch.full_like(mean, 0.01), ds.captions, meta
    )
    return npz, cache


def _base(tmp_path) -> Path:
    """A tiny 'latentworks train' run to control (one step, so it is a real run folder)."""
    cfg = DiffusionTrainConfig(
        latents=tmp_path / "lat.safetensors", out=tmp_path / "base", model=UNET, steps=1, batch_size=4,
        sample_every=1000, progress=False, sample_prompts=(),
    )  # fmt: skip
    train_diffusion(cfg, text_encoder=HashTextEncoder())
    return tmp_path / "base"


def _cfg(tmp_path, base, name="cn", **kw):
    args = dict(
        latents=tmp_path / "lat.safetensors", out=tmp_path / name, init_from=base, steps=4, batch_size=4,
        log_every=1, sample_every=1000, checkpoint_every=2, progress=False, sample_prompts=(), lr=1e-3,
        caption_dropout=0.0, controlnet=ControlNetTrainSpec(),
    )  # fmt: skip
    args.update(kw)
    return DiffusionTrainConfig(**args)


def test_a_new_controlnet_leaves_the_base_exactly_unchanged() -> None:
    torch.manual_seed(0)
    base = UNet(UNET).eval()
    net = controlnet_from_unet(base, (16, 32)).eval()
    # The trainable encoder is a copy of the base's.
    theirs = base.state_dict()
    for name in ("conv_in.weight", "down.1.transformers.0.proj_in.weight", "mid.res1.conv2.weight"):
        assert name in net.state_dict(), name
        assert torch.equal(net.state_dict()[name], theirs[name]), name
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100.0, 700.0])
    cond = Conditioning(tokens=torch.randn(2, 3, 16, generator=g))
    hint = (torch.rand(2, 3, SIZE, SIZE, generator=g) > 0.8).float()
    with torch.no_grad():
        plain = base(x, t, cond)
        assert torch.equal(base(x, t, cond, control=net(x, t, cond, hint)), plain)
        randomize_zero_convs(net, torch.Generator().manual_seed(2))  # the path is live: now it must differ
        assert not torch.allclose(base(x, t, cond, control=net(x, t, cond, hint)), plain, atol=1e-4)


def test_training_lowers_the_loss_and_writes_a_loadable_controlnet(tmp_path, data) -> None:
    _, cache = data
    base = _base(tmp_path)
    before = load_state_dict(base / "model.safetensors")
    spec = ControlNetTrainSpec()
    train_diffusion(
        _cfg(tmp_path, base, steps=20, checkpoint_every=20, lr=3e-3), text_encoder=HashTextEncoder()
    )
    # On one fixed noisy batch of all 20 images, the trained ControlNet (raw weights) predicts better than the
    # base alone; at its zero init it predicted exactly as the base (test above).
    state = load_state_dict(tmp_path / "cn" / "checkpoints" / "last.safetensors")
    net = controlnet_from_unet(load_init_source(base).net, (16, 32))
    net.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    base_net = load_init_source(base).net.eval()
    g = torch.Generator().manual_seed(123)
    objective = DiffusionObjective("flow")
    nb = objective.noise(cache.sample(torch.arange(20), g), g)
    cond = HashTextEncoder().encode(cache.captions)
    hints = load_hints(spec, cache, SIZE).float().expand(-1, 3, -1, -1)
    with torch.no_grad():
        plain = float(nb.loss(base_net(nb.x_in, nb.timestep, cond)))
        controlled = float(
            nb.loss(base_net(nb.x_in, nb.timestep, cond, control=net(nb.x_in, nb.timestep, cond, hints)))
        )
    assert controlled < 0.9 * plain, (plain, controlled)
    # The base is untouched; the ControlNet file (EMA weights) loads through the ordinary loader with its config.
    after = load_state_dict(base / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    loaded = load_controlnet(tmp_path / "cn" / "controlnet.safetensors")
    assert loaded.config.unet == UNET and loaded.config.hint_channels == (16, 32)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state["ema." + k]), k
    assert float(loaded.mid_out.weight.abs().max()) > 0  # trained away from the zero init
    assert not (tmp_path / "cn" / "model.safetensors").exists()


def test_resume_is_exact_and_refuses_a_plain_train_resume(tmp_path, data) -> None:
    base, enc = _base(tmp_path), HashTextEncoder()
    straight = train_diffusion(_cfg(tmp_path, base, "a", steps=3), text_encoder=enc)
    train_diffusion(_cfg(tmp_path, base, "b", steps=2), text_encoder=enc)
    resumed = train_diffusion(_cfg(tmp_path, base, "b", steps=3, resume=True), text_encoder=enc)
    assert resumed.losses == straight.losses[2:]
    a = load_state_dict(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b = load_state_dict(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ResumeError, match="'controlnet' run"):
        train_diffusion(_cfg(tmp_path, base, "b", steps=4, resume=True, controlnet=None), text_encoder=enc)
    with pytest.raises(ResumeError, match="--hint/--low-threshold/--high-threshold"):
        spec = ControlNetTrainSpec(low_threshold=0.1)
        train_diffusion(_cfg(tmp_path, base, "b", steps=4, resume=True, controlnet=spec), text_encoder=enc)


def test_a_dataset_that_is_not_the_caches_is_refused(tmp_path, data) -> None:
    base = _base(tmp_path)
    other = tmp_path / "other.npz"
    make_square_images(other, n=30, size=SIZE)  # 26 training images for a cache of 20
    with pytest.raises(ValueError, match="has 26 images but the latent cache has 20 items"):
        train_diffusion(
            _cfg(tmp_path, base, controlnet=ControlNetTrainSpec(data=other)), text_encoder=HashTextEncoder()
        )
    with pytest.raises(ValueError, match="needs its base model"):
        _cfg(tmp_path, None)
