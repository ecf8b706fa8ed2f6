import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_square_images  # noqa: E402

from latentworks.checkpoints.io import load_state_dict  # noqa: E402
from latentworks.training.vae import VAETrainConfig, train_vae  # noqa: E402


def _cfg(tmp_path, name="vae", **kw):
    base = dict(
        data=tmp_path / "sq.npz",
        out=tmp_path / name,
        preset="tiny",
        resolution=16,
        steps=4,
        batch_size=4,
        perceptual_weight=0.0,
        disc_start=2,
        log_every=1,
        sample_every=100,
        checkpoint_every=2,
        progress=False,
        eval_items=4,
        lr=1e-3,
    )
    base.update(kw)
    return VAETrainConfig(**base)


@pytest.fixture
def data(tmp_path):
    make_square_images(tmp_path / "sq.npz")


def test_vae_resume_exact_with_gan(tmp_path, data):
    a = train_vae(_cfg(tmp_path, "a"))
    train_vae(_cfg(tmp_path, "b", steps=2))
    b = train_vae(_cfg(tmp_path, "b", resume=True))
    assert a.step == b.step == 4
    sa = load_state_dict(tmp_path / "a" / "checkpoints" / "last.safetensors")
    sb = load_state_dict(tmp_path / "b" / "checkpoints" / "last.safetensors")
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert any(k.startswith("disc.") for k in sa) and "psnr" in a.metrics
    assert (tmp_path / "a" / "model.safetensors").is_file() and (tmp_path / "a" / "config.json").is_file()


def test_vae_learns_and_cache_latents(tmp_path, data, capsys):
    import json

    r = train_vae(_cfg(tmp_path, steps=40, disc_start=-1, checkpoint_every=40, lr=3e-3))
    log = [json.loads(line) for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()]
    assert sum(x["l1"] for x in log[-5:]) < 0.6 * sum(x["l1"] for x in log[:5])
    assert r.metrics["psnr"] > 12
    from latentworks.pipelines.latents import cache_latents, load_latent_cache

    c = cache_latents(tmp_path / "vae", tmp_path / "sq.npz", tmp_path / "lat.safetensors", progress=False)
    back = load_latent_cache(tmp_path / "lat.safetensors")
    assert back.mean.shape == (20, 4, 8, 8) and len(back.captions) == 20
    z = back.sample(torch.arange(20), torch.Generator().manual_seed(0))
    assert abs(float(z.std()) - 1) < 0.2 and abs(c.scale - back.scale) < 1e-9
    # A diffusion run on that cache exports (convert --from-run) to a model folder holding its EMA weights,
    # the run's autoencoder and the cache's latent scale/shift.
    from helpers import HashTextEncoder

    from latentworks.models.dit import DiTConfig
    from latentworks.pipelines.export import export_run
    from latentworks.pipelines.loading import load_model_folder
    from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion

    dit = DiTConfig(
        in_channels=4, sample_size=8, patch_size=2, width=32, depth=1, num_heads=2, context_dim=16
    )
    dcfg = DiffusionTrainConfig(
        latents=tmp_path / "lat.safetensors", out=tmp_path / "dm", architecture="dit", model=dit, steps=2,
        batch_size=4, checkpoint_every=2, sample_every=1000, progress=False, sample_prompts=(),
    )  # fmt: skip
    train_diffusion(dcfg, text_encoder=HashTextEncoder())
    mf = load_model_folder(export_run(tmp_path / "dm", tmp_path / "folder", name="t"))
    ema = load_state_dict(tmp_path / "dm" / "model.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in mf.denoiser_net.state_dict().items())
    vae = load_state_dict(tmp_path / "vae" / "model.safetensors")
    assert all(torch.equal(v, vae[k]) for k, v in mf.vae.state_dict().items())
    assert (mf.latent_format.scale_factor, mf.latent_format.shift_factor) == (back.scale, back.shift)
    # --shift: the same networks, with model.json's flow shift replaced (a sampling-time choice); the
    # schedule's midpoint moves to SD3's closed form, shift * u / (1 + (shift - 1) * u) at u = 1/2.
    assert mf.model_sampling.shift == 1.0
    shifted = load_model_folder(export_run(tmp_path / "dm", tmp_path / "f3", name="t", shift=3.0))
    assert shifted.meta["denoiser"]["sampling"] == {"kind": "flow", "shift": 3.0}
    assert abs(float(shifted.model_sampling.sigmas[499]) - 0.75) < 1e-12
    assert all(torch.equal(v, ema[k]) for k, v in shifted.denoiser_net.state_dict().items())
    # `latentworks eval floor` on the run: its reconstructions scored like generated images, with PSNR
    from latentworks.cli import main

    code = main(
        [
            "eval",
            "floor",
            str(tmp_path / "vae"),
            "--data",
            str(tmp_path / "sq.npz"),
            "--split",
            "all",
            "-n",
            "6",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert (
        code == 0
        and out[0].startswith("| reconstructions of | N | FID |")
        and out[2].startswith("| all | 6 |")
    )
    assert float(out[3].split()[-2]) > 12  # "PSNR of the reconstructions: 17.3 dB"


def test_perceptual_loss_is_zero_for_identical_and_grows():
    from latentworks.training.losses import InceptionPerceptualLoss

    p = InceptionPerceptualLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    n = torch.randn(2, 3, 32, 32, generator=g)
    d = [p(x, x + s * n).mean().item() for s in (0.0, 0.1, 0.5)]
    assert d[0] < 1e-8 and d[0] < d[1] < d[2]


def test_finetune_decoder_keeps_the_latents_and_swaps_into_a_model(tmp_path, data, tiny_model, capsys):
    """--finetune-decoder trains only the decoder; convert --decoder-from puts it into a model folder,
    and refuses an autoencoder whose encoder differs (its latents would not be the denoiser's)."""
    from latentworks.cli import main
    from latentworks.pipelines import Pipeline

    before = load_state_dict(tiny_model / "vae.safetensors")
    r = train_vae(_cfg(tmp_path, "ft", finetune_decoder=tiny_model, steps=3, disc_start=0))
    assert r.step == 3
    after = load_state_dict(tmp_path / "ft" / "model.safetensors")
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert sum(not torch.equal(before[k], after[k]) for k in decoder) > len(decoder) // 2

    new = tmp_path / "models" / "tiny-ft"
    assert main(["convert", str(tiny_model), "--decoder-from", str(tmp_path / "ft"), "--out", str(new)]) == 0
    swapped = load_state_dict(new / "vae.safetensors")
    assert all(torch.equal(swapped[k], after[k]) for k in before)
    assert (new / "denoiser.safetensors").read_bytes() == (tiny_model / "denoiser.safetensors").read_bytes()
    assert (new / "model.json").read_text() == (tiny_model / "model.json").read_text()
    pipe = Pipeline.from_pretrained(new)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = Pipeline.from_pretrained(tiny_model)
    assert not torch.allclose(pipe.model.vae.decode(z), ref.model.vae.decode(z))

    # an autoencoder trained from scratch has another encoder: refused, nothing written
    train_vae(_cfg(tmp_path, "scratch", steps=1))
    capsys.readouterr()
    bad = tmp_path / "models" / "bad"
    code = main(["convert", str(tiny_model), "--decoder-from", str(tmp_path / "scratch"), "--out", str(bad)])
    assert code == 2 and "encoder differs" in capsys.readouterr().err and not bad.exists()
    # an existing --out is never overwritten
    code = main(["convert", str(tiny_model), "--decoder-from", str(tmp_path / "ft"), "--out", str(new)])
    assert code == 2 and "exists" in capsys.readouterr().err
    # a missing source is a clear error
    code = main(
        [
            "train-vae",
            "--data",
            str(tmp_path / "sq.npz"),
            "--out",
            str(tmp_path / "x"),
            "--finetune-decoder",
            str(tmp_path / "nope"),
        ]
    )
    assert code == 2 and "no such run or model folder" in capsys.readouterr().err


@pytest.mark.parametrize("change", [{"channels": (16, 48)}, {"layers_per_block": 2}])
def test_replace_decoder_refuses_another_architecture(tmp_path, tiny_model, change):
    """Other tensor shapes under the same names are refused like other names (load_state_dict would
    otherwise fail later, on a folder already written)."""
    import dataclasses

    from latentworks.models.autoencoder import PRESETS, Autoencoder
    from latentworks.pipelines.loading import replace_decoder

    other = Autoencoder(dataclasses.replace(PRESETS["tiny"], **change))
    with pytest.raises(ValueError, match="different tensors"):
        replace_decoder(tiny_model, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()
