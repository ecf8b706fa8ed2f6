"""``latentworks generate --controlnet FILE --control-image IMG``: equals the API, records the control in the PNG,
and refuses bad combinations and another family's ControlNet without a traceback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from latentworks.cli import main
from latentworks.families.controlnet import FLUX_DIFFUSERS
from latentworks.families.load import write_single_file
from latentworks.models.controlnet_flux import FluxControlNet, FluxControlNetConfig
from latentworks.models.flux import PRESETS as FLUX_PRESETS
from latentworks.pipelines import Pipeline
from latentworks.pipelines.control import Control
from latentworks.pipelines.metadata import read_parameters
from support.checkpoints import tiny_sd1_parts
from support.controlnet import tiny_controlnet, write_controlnet


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cn")
    parts = tiny_sd1_parts(root / "tiny-sd1.safetensors")
    ckpt = write_single_file(parts, root / "tiny-sd1.safetensors")
    cn = write_controlnet(root / "cn.safetensors", tiny_controlnet(parts.denoiser_config), layout="original")
    sd2_like = replace(
        parts.denoiser_config, channels=(64, 64), context_dim=1024, num_heads=None, head_dim=64
    )
    other = write_controlnet(root / "other.safetensors", tiny_controlnet(sd2_like), layout="diffusers")
    flux_cfg = FluxControlNetConfig(flux=FLUX_PRESETS["tiny"], num_modes=4)
    flux = FluxControlNet(flux_cfg)
    save_file(FLUX_DIFFUSERS.from_ours(flux.state_dict(), flux_cfg), str(root / "flux.safetensors"))
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[4:12, 6:10] = 255
    Image.fromarray(img).save(root / "edges.png")
    return {
        "ckpt": ckpt, "cn": cn, "other": other, "flux": root / "flux.safetensors", "image": root / "edges.png",
        "root": root,
    }  # fmt: skip


def _base(files: dict[str, Path], out: Path) -> list[str]:
    return [
        "generate", "a red apple", "--model", str(files["ckpt"]), "--steps", "2", "--seed", "3", "--quiet",
        "--width", "16", "--height", "16", "-o", str(out),
    ]  # fmt: skip


def test_generate_with_controlnet_equals_the_api(files: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    args = [*_base(files, tmp_path / "c.png"), "--controlnet", str(files["cn"])]
    args += ["--control-image", str(files["image"]), "--control-strength", "0.6"]
    assert main(args) == 0, capsys.readouterr().err
    pipe = Pipeline.from_pretrained(files["ckpt"])
    image = Image.open(files["image"])
    with pytest.warns(UserWarning):
        api = pipe(
            "a red apple",
            "",
            steps=2,
            seed=3,
            width=16,
            height=16,
            control=[Control(image, files["cn"], 0.6)],
        )
        plain = pipe("a red apple", "", steps=2, seed=3, width=16, height=16)
    cli = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"), dtype=np.int16)
    assert np.array_equal(cli, np.asarray(api.images[0], dtype=np.int16))
    assert np.abs(cli - np.asarray(plain.images[0], dtype=np.int16)).max() > 0
    recorded = read_parameters(tmp_path / "c.png")["control"]
    assert recorded == [{"controlnet": "cn.safetensors", "strength": 0.6, "start": 0.0, "end": 1.0}]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--controlnet", "CN"], "give one --control-image per --controlnet"),
        (["--control-strength", "0.5"], "--control-strength needs --controlnet"),
        (["--controlnet", "OTHER", "--control-image", "IMG"], "another model family"),
        (["--controlnet", "missing.safetensors", "--control-image", "IMG"], "--controlnet: no such file"),
        (["--controlnet", "FLUX", "--control-image", "IMG"], "FLUX ControlNet but the model is a UNet"),
        (["--controlnet", "CN", "--control-image", "IMG", "--control-mode", "1"], "not a Union ControlNet"),
        (["--controlnet", "CN", "--control-image", "IMG", "--control-mode", "x"], "a mode index (0, 1, ...)"),
        (
            ["--controlnet", "CN", "--control-image", "IMG", "--control-mode", "1", "--control-mode", "2"],
            "give one --control-mode per --controlnet",
        ),
    ],
)
def test_bad_controlnet_arguments_are_clear_errors(
    files: dict[str, Path],
    tmp_path: Path,
    capsys,
    extra: list[str],
    message: str,  # noqa: ANN001
) -> None:
    subst = {k: str(files[k.lower()]) for k in ("CN", "OTHER", "FLUX")} | {"IMG": str(files["image"])}
    code = main([*_base(files, tmp_path / "x.png"), *[subst.get(a, a) for a in extra]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
