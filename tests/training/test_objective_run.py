"""A training run records the sampling spec of its objective, and a fine-tune keeps its source's spec, so the
exported model folder is sampled with the schedule the network was trained on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import HashTextEncoder, make_latent_cache  # noqa: E402

from latentworks.diffusion.latent_formats import LatentFormat  # noqa: E402
from latentworks.models.autoencoder import PRESETS as VAE_PRESETS  # noqa: E402
from latentworks.models.autoencoder import Autoencoder  # noqa: E402
from latentworks.models.dit import DiT, DiTConfig  # noqa: E402
from latentworks.pipelines.export import run_objective  # noqa: E402
from latentworks.pipelines.loading import save_model_folder  # noqa: E402
from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion  # noqa: E402

DIT = DiTConfig(in_channels=4, sample_size=8, patch_size=2, width=32, depth=1, num_heads=2, context_dim=16)


def _train(tmp_path: Path, name: str, **kw) -> dict:
    cfg = DiffusionTrainConfig(
        latents=tmp_path / "lat.safetensors", out=tmp_path / name, architecture="dit", model=DIT, steps=1,
        batch_size=2, sample_every=1000, checkpoint_every=1000, progress=False, sample_prompts=(), **kw,
    )  # fmt: skip
    train_diffusion(cfg, text_encoder=HashTextEncoder())
    return json.loads((tmp_path / name / "config.json").read_text())


def test_runs_record_and_fine_tunes_keep_the_sampling_spec(tmp_path):
    cache = make_latent_cache(tmp_path / "lat.safetensors", n=4)
    fresh = _train(tmp_path, "fresh", prediction="v")
    assert fresh["sampling"] == {"kind": "discrete", "betas": "scaled_linear"}

    spec = {"kind": "discrete", "betas": "linear", "linear_start": 0.0001, "linear_end": 0.02}
    folder = save_model_folder(
        tmp_path / "src", name="src", architecture="dit", denoiser=DiT(DIT), prediction="eps", sampling=spec,
        vae=Autoencoder(VAE_PRESETS["tiny"]),
        latent_format=LatentFormat(channels=4, scale_factor=cache.scale, shift_factor=cache.shift),
        text_encoder={"kind": "minilm", "max_length": 32}, resolution=(16, 16),
    )  # fmt: skip
    tuned = _train(tmp_path, "tuned", prediction="eps", init_from=folder)
    assert tuned["sampling"] == spec
    assert run_objective(tuned).sampling.to_dict() == spec  # what convert --from-run writes
