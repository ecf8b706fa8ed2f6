"""Key maps and config-from-shapes for the Qwen-Image VAE (:class:`~latentworks.models.qwenimage_vae.QwenImageVAE`).

Two layouts exist:

- **diffusers** (``vae/`` of a ``QwenImagePipeline`` folder, ``AutoencoderKLQwenImage``): our own names (the
  model keeps diffusers' readable hierarchy), so the map is the identity plus a shape check.
- **Wan** (ComfyUI's ``qwen_image_vae.safetensors``; ComfyUI runs it with ``comfy/ldm/wan/vae.py``, the
  original Wan 2.1 module tree): ``encoder.conv1``, ``encoder.downsamples.{i}`` (the same flat list as our
  ``down_blocks``) whose residual blocks are ``nn.Sequential``s ``residual.{0: norm1, 2: conv1, 3: norm2,
  6: conv2}`` plus ``shortcut``; ``encoder.middle.{0, 1, 2}`` (residual, attention, residual);
  ``encoder.head.{0: norm, 2: conv}``; ``conv1`` / ``conv2`` for ``quant_conv`` / ``post_quant_conv``; the
  decoder's ``upsamples.{i}`` is one flat list (each stage's ``num_res_blocks + 1`` residual blocks, then its
  upsampler), which we group as ``up_blocks.{stage}.resnets.{j}`` / ``.upsamplers.0``. Resamplers keep
  ``resample.1`` and ``time_conv`` in both.

Both directions are strict: every tensor of ours is produced exactly once, with its shape checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from latentworks.models.qwenimage_vae import QwenImageVAE, QwenImageVAEConfig

# A key only the Qwen-Image / Wan 2.1 VAE has, per layout (RMS-norm gammas instead of GroupNorm).
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"
WAN_MARKER = "decoder.middle.0.residual.0.gamma"

_RES = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma": "norm2.gamma",
        "residual.6": "conv2", "shortcut": "conv_shortcut"}  # fmt: skip


def is_qwenimage_vae(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """``"diffusers"`` or ``"wan"`` when ``shapes`` (un-prefixed) are a Qwen-Image / Wan 2.1 VAE, else None."""
    if DIFFUSERS_MARKER in shapes:
        return "diffusers"
    if WAN_MARKER in shapes:
        return "wan"
    return None


def _expected(config: QwenImageVAEConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in QwenImageVAE(config).state_dict().items()}


def qwenimage_vae_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], source: str
) -> QwenImageVAEConfig:
    """The config of a VAE in our (= diffusers') names, from its shapes alone."""
    try:
        base_dim, in_channels = shapes["encoder.conv_in.weight"][:2]
        z_dim = shapes["post_quant_conv.weight"][0]
    except KeyError as e:
        raise ValueError(f"{source}: a Qwen-Image VAE without {e.args[0]!r}; is the file complete?") from None
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    widths: list[int] = []  # output width of each stage
    temporal: list[bool] = []
    res_in_stage = [0]
    for i in blocks:
        p = f"encoder.down_blocks.{i}."
        if p + "resample.1.weight" in shapes:
            temporal.append(p + "time_conv.weight" in shapes)
            res_in_stage.append(0)
        else:
            out = shapes[p + "conv1.weight"][0]
            if res_in_stage[-1] == 0:
                widths.append(out)
            res_in_stage[-1] += 1
    if not widths or any(w % base_dim for w in widths):
        raise ValueError(f"{source}: Qwen-Image VAE stage widths {widths} are not multiples of {base_dim}")
    config = QwenImageVAEConfig(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=tuple(w // base_dim for w in widths),
        num_res_blocks=res_in_stage[0],
        temporal_downsample=tuple(temporal),
        in_channels=in_channels,
    )
    return config


def _check(out: Mapping[str, Tensor], config: QwenImageVAEConfig, source: str) -> None:
    expected = _expected(config)
    missing = sorted(set(expected) - set(out))
    unknown = sorted(set(out) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"{source}: not a Qwen-Image VAE of the detected shape: missing {missing[:4]} "
            f"({len(missing)}), unexpected {unknown[:4]} ({len(unknown)})"
        )
    for k, shape in expected.items():
        if tuple(out[k].shape) != shape:
            raise ValueError(f"{source}: {k} has shape {tuple(out[k].shape)}, expected {shape}")


def _wan_to_ours_key(key: str, config: QwenImageVAEConfig) -> str:
    n = config.num_res_blocks
    for prefix in ("encoder.", "decoder."):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest.startswith("conv1."):
            return prefix + "conv_in." + rest[len("conv1.") :]
        if m := re.match(r"head\.0\.gamma$", rest):
            return prefix + "norm_out.gamma"
        if m := re.match(r"head\.2\.(weight|bias)$", rest):
            return prefix + "conv_out." + m.group(1)
        if m := re.match(r"middle\.(\d)\.(.+)$", rest):
            i, tail = int(m.group(1)), m.group(2)
            if i == 1:
                return prefix + "mid_block.attentions.0." + tail
            return prefix + f"mid_block.resnets.{i // 2}." + _res_tail(tail, key)
        if m := re.match(r"downsamples\.(\d+)\.(.+)$", rest):
            block, tail = m.group(1), m.group(2)
            if tail.startswith(("resample.", "time_conv.")):
                return prefix + f"down_blocks.{block}.{tail}"
            return prefix + f"down_blocks.{block}." + _res_tail(tail, key)
        if m := re.match(r"upsamples\.(\d+)\.(.+)$", rest):
            i, tail = int(m.group(1)), m.group(2)
            stage, j = divmod(i, n + 2)
            if j == n + 1:
                return prefix + f"up_blocks.{stage}.upsamplers.0.{tail}"
            return prefix + f"up_blocks.{stage}.resnets.{j}." + _res_tail(tail, key)
    if m := re.match(r"conv([12])\.(weight|bias)$", key):
        return ("quant_conv." if m.group(1) == "1" else "post_quant_conv.") + m.group(2)
    raise ValueError(f"unexpected key {key!r} for a Qwen-Image VAE in the Wan layout")


def _res_tail(tail: str, key: str) -> str:
    for theirs, ours in _RES.items():
        if tail == theirs or tail.startswith(theirs + "."):
            return ours + tail[len(theirs) :]
    raise ValueError(f"unexpected residual-block key {key!r} for a Qwen-Image VAE in the Wan layout")


def qwenimage_vae_from_wan(state: Mapping[str, Tensor], config: QwenImageVAEConfig) -> dict[str, Tensor]:
    """ComfyUI's ``qwen_image_vae.safetensors`` (Wan 2.1 names, un-prefixed) -> ours. Strict."""
    out: dict[str, Tensor] = {}
    for key in state:
        ours = _wan_to_ours_key(key, config)
        if ours in out:
            raise ValueError(f"two Wan-layout keys map to {ours!r} (the second: {key!r})")
        out[ours] = state[key]
    _check(out, config, "Wan-layout VAE")
    return out


def qwenimage_vae_to_wan(state: Mapping[str, Tensor], config: QwenImageVAEConfig) -> dict[str, Tensor]:
    """Ours -> the Wan 2.1 names of ComfyUI's ``qwen_image_vae.safetensors`` (the inverse map)."""
    _check(state, config, "Qwen-Image VAE")
    expected = _expected(config)
    inverse: dict[str, str] = {}
    for k in _wan_keys(config):  # a superset of the layout's keys; those that map nowhere are skipped
        try:
            inverse[_wan_to_ours_key(k, config)] = k
        except ValueError:
            continue
    missing = sorted(set(expected) - set(inverse))
    if missing:  # a bug here, not in the input
        raise AssertionError(f"no Wan name for {missing[:4]}")
    return {inverse[k]: v for k, v in state.items()}


def _wan_keys(config: QwenImageVAEConfig) -> list[str]:
    """A superset of the Wan layout's keys for ``config`` (every block gets every kind of tensor name)."""
    keys: list[str] = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    res_tails = [f"residual.{i}.{w}" for i, w in ((0, "gamma"), (3, "gamma"))] + [
        f"{part}.{w}" for part in ("residual.2", "residual.6", "shortcut") for w in ("weight", "bias")
    ]
    n = config.num_res_blocks
    n_enc = len(config.dim_mult) * n + len(config.dim_mult) - 1
    n_dec = len(config.dim_mult) * (n + 2) - 1
    for coder, count, name in (("encoder", n_enc, "downsamples"), ("decoder", n_dec, "upsamples")):
        keys += [f"{coder}.conv1.{w}" for w in ("weight", "bias")]
        keys += [f"{coder}.head.0.gamma", f"{coder}.head.2.weight", f"{coder}.head.2.bias"]
        keys += [f"{coder}.middle.{i}.{t}" for i in (0, 2) for t in res_tails]
        keys += [f"{coder}.middle.1.{t}" for t in ("norm.gamma", "to_qkv.weight", "to_qkv.bias")]
        keys += [f"{coder}.middle.1.proj.{w}" for w in ("weight", "bias")]
        for i in range(count):
            keys += [f"{coder}.{name}.{i}.{t}" for t in res_tails]
            keys += [
                f"{coder}.{name}.{i}.{t}.{w}" for t in ("resample.1", "time_conv") for w in ("weight", "bias")
            ]
    return keys


def qwenimage_vae_from_diffusers(
    state: Mapping[str, Tensor], config: QwenImageVAEConfig
) -> dict[str, Tensor]:
    """diffusers ``AutoencoderKLQwenImage`` -> ours: the same names; checked strictly."""
    out = dict(state)
    _check(out, config, "diffusers Qwen-Image VAE")
    return out


def read_qwenimage_vae(
    weights: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], *, source: str
) -> tuple[QwenImageVAEConfig, dict[str, Tensor]]:
    """(config, our state dict) of a Qwen-Image VAE in either layout (un-prefixed)."""
    config = qwenimage_vae_config(shapes, source)
    if is_qwenimage_vae(shapes) == "diffusers":
        return config, qwenimage_vae_from_diffusers({k: weights[k] for k in shapes}, config)
    return config, qwenimage_vae_from_wan({k: weights[k] for k in shapes}, config)


def qwenimage_vae_config(shapes: Mapping[str, tuple[int, ...]], source: str) -> QwenImageVAEConfig:
    """The config of a Qwen-Image VAE in either layout (un-prefixed shapes)."""
    layout = is_qwenimage_vae(shapes)
    if layout == "diffusers":
        return qwenimage_vae_config_from_shapes(shapes, source)
    if layout == "wan":
        names = {_wan_to_ours_key(k, _PROBE): k for k in shapes if ".upsamples." not in k}
        return qwenimage_vae_config_from_shapes({o: shapes[t] for o, t in names.items()}, source)
    raise ValueError(f"{source}: not a Qwen-Image VAE (no {DIFFUSERS_MARKER!r} or {WAN_MARKER!r})")


# Encoder keys map without knowing the config (only decoder upsamples need num_res_blocks).
_PROBE = QwenImageVAEConfig()


DIFFUSERS_CLASS = "AutoencoderKLQwenImage"


def qwenimage_vae_config_to_diffusers(
    config: QwenImageVAEConfig, latents_mean: tuple[float, ...], latents_std: tuple[float, ...]
) -> dict[str, object]:
    """diffusers' ``vae/config.json`` for ``config`` with the per-channel latent statistics."""
    return {
        "_class_name": DIFFUSERS_CLASS,
        "base_dim": config.base_dim,
        "z_dim": config.z_dim,
        "dim_mult": list(config.dim_mult),
        "num_res_blocks": config.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(config.temporal_downsample),
        "dropout": 0.0,
        "input_channels": config.in_channels,
        "latents_mean": list(latents_mean),
        "latents_std": list(latents_std),
    }


def qwenimage_vae_stats_from_diffusers(
    cfg: Mapping[str, object], source: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(latents_mean, latents_std) of a diffusers ``AutoencoderKLQwenImage`` config (the release's when absent)."""
    from latentworks.models.qwenimage_vae import RELEASE_LATENTS_MEAN, RELEASE_LATENTS_STD

    mean = tuple(float(v) for v in cfg.get("latents_mean", RELEASE_LATENTS_MEAN))  # type: ignore[attr-defined]
    std = tuple(float(v) for v in cfg.get("latents_std", RELEASE_LATENTS_STD))  # type: ignore[attr-defined]
    if len(mean) != len(std) or len(mean) != int(cfg.get("z_dim", 16)):  # type: ignore[call-overload]
        raise ValueError(f"{source}: latents_mean / latents_std must have z_dim entries each")
    return mean, std
