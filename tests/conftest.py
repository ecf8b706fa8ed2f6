"""Shared fixtures: a tiny random-weight model folder for pipeline, node and CLI tests (no training needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from latentworks import families
from latentworks.models.autoencoder import PRESETS as VAE_PRESETS
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import UNet
from latentworks.pipelines.loading import save_model_folder


def make_tiny_model(path: Path, prediction: str = "v", sampling: dict | None = None) -> Path:
    torch.manual_seed(0)
    vae = Autoencoder(VAE_PRESETS["tiny"])  # f2, 4 latent channels
    unet_cfg = UNET_PRESETS["tiny"]
    unet = UNet(dataclasses.replace(unet_cfg, context_dim=384))
    # Random weights give near-zero outputs at init in places (zero-init convs); perturb everything so
    # the tests see a network whose output depends on every input.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_model_folder(
        path,
        name="tiny-test",
        architecture="unet",
        denoiser=unet,
        prediction=prediction,
        sampling=sampling or {"kind": "discrete", "betas": "scaled_linear"},
        vae=vae,
        latent_format=dataclasses.replace(families.get("sd15").latent_format, scale_factor=1.0),
        text_encoder={"kind": "minilm", "max_length": 16},
        resolution=(16, 16),
        defaults={"steps": 4, "guidance": 3.0, "sampler": "euler", "scheduler": "normal"},
        card={"licence": "test only"},
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_flow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-flow",
        prediction="flow",
        sampling={"kind": "flow", "shift": 1.0},
    )


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model: Path):
    from latentworks.pipelines import Pipeline

    return Pipeline.from_pretrained(tiny_model)


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    """A test (or the code it calls) must not leave autograd switched off for the tests after it."""
    assert torch.is_grad_enabled(), "autograd was already off when this test started"
    yield
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "this test left autograd switched off (torch.set_grad_enabled(False) leaked)"
