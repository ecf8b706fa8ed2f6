"""Control-LoRA files: a ControlNet written by hand as ``base U-Net + up @ down`` (rank 4, the file's real
``.up`` (out, r, 1, 1) / ``.down`` (r, in, k, k) shapes, LDM names, full tensors for the rest) loads, rebuilds
against the model and gives exactly that ControlNet's residuals and images; using it on another model is a
clear error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentworks.checkpoints.keymaps.controlnet import controlnet_original_module_map
from latentworks.diffusion.conditioning import Conditioning
from latentworks.families.control_lora import ControlLoRA
from latentworks.families.controlnet import ORIGINAL, load_controlnet
from latentworks.families.load import write_single_file
from latentworks.models.controlnet import ControlNet, ControlNetConfig, randomize_zero_convs
from latentworks.models.flux import PRESETS as FLUX_PRESETS
from latentworks.models.flux import Flux
from latentworks.models.unet import UNet
from latentworks.pipelines import Pipeline
from latentworks.pipelines.control import Control
from support.checkpoints import tiny_sd1_parts

RANK = 4
HINT = (16, 32)  # the tiny VAE downsamples 2x


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("control_lora")
    parts = tiny_sd1_parts(root / "tiny-sd1.safetensors")
    ckpt = write_single_file(parts, root / "tiny-sd1.safetensors")
    config = ControlNetConfig(unet=parts.denoiser_config, hint_channels=HINT)
    base = dict(parts.denoiser_state)
    ldm = controlnet_original_module_map(config)  # our module -> LDM module
    g = torch.Generator().manual_seed(7)

    # The ControlNet by hand: shared weights = base + A @ B (rank 4), everything else random.
    torch.manual_seed(8)
    net = ControlNet(config).eval()
    randomize_zero_convs(net, g, std=0.2)
    truth = {k: v.clone() for k, v in net.state_dict().items()}
    lora: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    for key in truth:
        module, _, param = key.rpartition(".")
        if key in base and param == "weight" and truth[key].ndim >= 2:
            w = base[key]
            up = torch.randn(w.shape[0], RANK, generator=g) * 0.1
            down = torch.randn(RANK, w[0].numel(), generator=g) * 0.1
            truth[key] = w + (up @ down).reshape(w.shape)
            extra = (1, 1) if w.ndim == 4 else ()
            lora[f"{ldm[module]}.up"] = up.reshape(w.shape[0], RANK, *extra)
            lora[f"{ldm[module]}.down"] = down.reshape(RANK, *w.shape[1:])
        else:
            if key in base:  # a norm or bias the file stores in full: make it differ from the base
                truth[key] = base[key] + 0.05 * torch.randn(base[key].shape, generator=g)
            lora[f"{ldm[module]}.{param}"] = truth[key]
    net.load_state_dict(truth)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(root / "control-lora.safetensors"))
    full = {f"control_model.{k}": v.contiguous() for k, v in ORIGINAL.from_ours(truth, config).items()}
    save_file(full, str(root / "full.safetensors"))
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[4:12, 5:9] = 255
    return {"ckpt": ckpt, "parts": parts, "net": net, "root": root, "image": Image.fromarray(img)}


def test_rebuilt_controlnet_equals_the_one_written_by_hand(files: dict) -> None:
    lora = load_controlnet(files["root"] / "control-lora.safetensors")
    assert isinstance(lora, ControlLoRA) and lora.hint_channels == HINT
    unet = UNet(files["parts"].denoiser_config).eval()
    unet.load_state_dict(files["parts"].denoiser_state)
    lora.check_model(unet)
    assert lora.net is not None
    want = files["net"].state_dict()
    got = lora.net.state_dict()
    assert got.keys() == want.keys()
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-6
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900.0, 100.0])
    cond = Conditioning(tokens=torch.randn(2, 5, 768, generator=g))
    hint = torch.rand(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        a, b = lora(x, t, cond, hint), files["net"](x, t, cond, hint)
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a.down, b.down, strict=True))
    assert a.mid is not None and b.mid is not None and torch.allclose(a.mid, b.mid, atol=1e-5)
    assert b.mid.abs().max() > 1e-3


def test_control_lora_in_the_pipeline_equals_its_full_controlnet(files: dict) -> None:
    pipe = Pipeline.from_pretrained(files["ckpt"])
    kw = dict(steps=2, guidance=5.0, seed=3, width=16, height=16)
    with pytest.warns(UserWarning):  # tiny sizes
        lora = pipe(
            "a red apple",
            "",
            control=[Control(files["image"], files["root"] / "control-lora.safetensors")],
            **kw,
        )
        full = pipe(
            "a red apple", "", control=[Control(files["image"], files["root"] / "full.safetensors")], **kw
        )
        plain = pipe("a red apple", "", **kw)
    assert (lora.latents - full.latents).abs().max() < 1e-4
    assert (lora.latents - plain.latents).abs().max() > 1e-2
    assert lora.parameters["control"][0]["controlnet"] == "control-lora.safetensors"


def test_control_lora_on_another_model_is_a_clear_error(files: dict) -> None:
    lora = load_controlnet(files["root"] / "control-lora.safetensors")
    assert isinstance(lora, ControlLoRA)
    with pytest.raises(ValueError, match="for SD-style U-Nets"):
        lora.check_model(Flux(FLUX_PRESETS["tiny"]))
    other = replace(files["parts"].denoiser_config, channels=(32, 32))
    with pytest.raises(ValueError, match="Control-LoRA for this model family"):
        lora.check_model(UNet(other))
