"""CLIP text encoders from state dicts: key maps, detection, derived configs, and outputs vs transformers.

The references are transformers models at the real widths, heads, MLP sizes and vocabulary of CLIP-L,
OpenCLIP-H and bigG, with 2 layers instead of 12/24/32; ours are built from their state dicts alone (bigG and
H through the open_clip layout).
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from latentworks.models.text.clip import build_clip, clip_config_from_shapes, clip_encode
from latentworks.models.text.layouts import (
    TextEncoderKeyError,
    detect_text_encoder,
    hf_to_open_clip,
    normalize_hf_clip,
    open_clip_to_hf,
    to_hf_clip,
)

TOLERANCE = 1e-4
REAL = {  # width: (intermediate, activation) of the real towers
    768: (3072, "quick_gelu"),
    1024: (4096, "gelu"),
    1280: (5120, "gelu"),
}


def _reference(width: int, *, layers: int = 2, projection: bool, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    intermediate, act = REAL[width]
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=77, hidden_act=act,
        projection_dim=width, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )  # fmt: skip
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def _file_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as files store it (``text_model.`` prefix, as diffusers folders and SD files do)."""
    return normalize_hf_clip(model.state_dict())


def _ids(batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49406, (batch, 77), generator=g)
    ids[:, 0] = 49406
    ids[0, 9], ids[0, 10:] = 49407, 49407  # EOS then EOS padding (CLIP-L style)
    ids[1, 40], ids[1, 41:] = 49407, 0  # EOS then "!" padding (OpenCLIP style)
    return ids


@pytest.mark.parametrize("width,projection", [(768, False), (1024, False), (1280, True)])
def test_full_width_matches_transformers(width: int, projection: bool) -> None:
    ref = _reference(width, projection=projection)
    sd = _file_layout(ref)
    source = sd if width == 768 else hf_to_open_clip(sd)  # OpenCLIP towers arrive in open_clip layout
    ours = build_clip(source)
    assert type(ours) is type(ref)
    assert ours.config.hidden_act == REAL[width][1] and ours.config.num_attention_heads == width // 64
    ids = _ids()
    with torch.no_grad():
        r = ref(input_ids=ids, output_hidden_states=True)
    for layer, final_norm in [(-1, True), (-2, False), (-2, True)]:
        out = clip_encode(ours, ids, layer=layer, final_norm=final_norm, project_pooled=projection)
        text_model = getattr(ref, "text_model", ref)
        expected = r.last_hidden_state if (layer, final_norm) == (-1, True) else r.hidden_states[layer]
        if final_norm and layer == -2:
            expected = text_model.final_layer_norm(expected)
        err = ((out.hidden - expected).abs().max() / expected.abs().max()).item()
        assert err < TOLERANCE, (layer, final_norm, err)
    pooled_ref = r.text_embeds if projection else r.pooler_output
    torch.testing.assert_close(
        out.pooled, pooled_ref, rtol=TOLERANCE, atol=TOLERANCE * pooled_ref.abs().max().item()
    )
    # pooled is taken at the first EOS: changing tokens after it changes nothing
    ids2 = ids.clone()
    ids2[0, 30] = 5
    assert torch.equal(clip_encode(ours, ids2, project_pooled=projection).pooled[0], out.pooled[0])
    del ref, ours, sd, source
    gc.collect()


def test_open_clip_round_trip_is_exact_and_projection_is_transposed() -> None:
    ref = _reference(1280, layers=2, projection=True)
    sd = _file_layout(ref)
    oc = hf_to_open_clip(sd)
    assert oc["text_projection"].shape == (1280, 1280)
    torch.testing.assert_close(oc["text_projection"], sd["text_projection.weight"].t(), rtol=0, atol=0)
    assert oc["transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * 1280, 1280)
    q = sd["text_model.encoder.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(oc["transformer.resblocks.1.attn.in_proj_weight"][:1280], q)
    back = open_clip_to_hf({**oc, "logit_scale": torch.tensor(4.6)})  # logit_scale is dropped
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # and open_clip -> HF -> open_clip is exact too
    again = hf_to_open_clip(back)
    assert set(again) == set(oc) and all(torch.equal(again[k], oc[k]) for k in oc)


def test_detect_text_encoder() -> None:
    for width, kind in [(768, "clip_l"), (1024, "clip_h"), (1280, "clip_g")]:
        with torch.device("meta"):
            ref = _reference(width, layers=1, projection=False)
        sd = _file_layout(ref)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        assert detect_text_encoder(shapes) == (kind, "hf")
        oc = {k: tuple(v.shape) for k, v in hf_to_open_clip(sd).items()}
        assert detect_text_encoder(oc) == (kind, "open_clip")
        old_sd1 = {k.removeprefix("text_model."): v for k, v in shapes.items()}  # old SD1 files
        assert detect_text_encoder(old_sd1) == (kind, "hf")
    assert detect_text_encoder({"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096)}) == (
        "t5xxl",
        "t5",
    )
    with pytest.raises(TextEncoderKeyError, match="width 512"):
        detect_text_encoder({"text_model.embeddings.token_embedding.weight": (49408, 512)})
    with pytest.raises(TextEncoderKeyError, match="not a CLIP or T5"):
        detect_text_encoder({"model.diffusion_model.x": (1,)})


def test_old_sd1_prefix_and_position_ids_are_normalised() -> None:
    ref = _reference(768, layers=1, projection=False)
    sd = _file_layout(ref)
    old = {k.removeprefix("text_model."): v for k, v in sd.items()}
    old["embeddings.position_ids"] = torch.arange(77)[None]
    assert set(to_hf_clip(old)) == set(sd)
    ids = _ids()
    torch.testing.assert_close(
        clip_encode(build_clip(old), ids).hidden, clip_encode(build_clip(sd), ids).hidden
    )


def test_strict_errors_name_the_key() -> None:
    sd = _file_layout(_reference(768, layers=2, projection=False))
    broken = dict(sd)
    del broken["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(TextEncoderKeyError, match=r"layers\.1\.mlp\.fc2\.bias"):
        build_clip(broken)
    oc = hf_to_open_clip(sd)
    with pytest.raises(TextEncoderKeyError, match="transformer.resblocks.0.attn.extra"):
        open_clip_to_hf({**oc, "transformer.resblocks.0.attn.extra": torch.zeros(1)})
    bad = dict(oc)
    bad["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(100, 768)
    with pytest.raises(TextEncoderKeyError, match="q, k, v"):
        open_clip_to_hf(bad)


def test_config_from_shapes() -> None:
    with torch.device("meta"):
        ref = _reference(1280, layers=3, projection=True)
    cfg = clip_config_from_shapes({k: tuple(v.shape) for k, v in _file_layout(ref).items()})
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1280, 3, 20)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (5120, 49408, 77)
    assert (cfg.projection_dim, cfg.hidden_act, cfg.eos_token_id) == (1280, "gelu", 49407)


def test_single_file_text_encoder_prefixes_name_what_the_shapes_say() -> None:
    """detect.text_encoder_prefixes names each embedded encoder by its prefix; the shapes under that
    prefix must say the same (SDXL: HF CLIP-L + open_clip bigG; SD1: CLIP-L without 'text_model.')."""
    from latentworks.checkpoints.detect import text_encoder_prefixes

    with torch.device("meta"):
        clip_l = _file_layout(_reference(768, layers=1, projection=False))
        big_g = hf_to_open_clip(_file_layout(_reference(1280, layers=1, projection=True)))

    def parts(file: dict) -> dict[str, dict]:
        shapes = {k: tuple(v.shape) for k, v in file.items()}
        found = text_encoder_prefixes(shapes)
        out = {n: {k[len(p) :]: v for k, v in file.items() if k.startswith(p)} for n, p in found.items()}
        for name, part in out.items():
            assert detect_text_encoder({k: tuple(v.shape) for k, v in part.items()})[0] == name
        return out

    sdxl_file = {f"conditioner.embedders.0.transformer.{k}": v for k, v in clip_l.items()}
    sdxl_file |= {f"conditioner.embedders.1.model.{k}": v for k, v in big_g.items()}
    sdxl_file["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1, device="meta")
    got = parts(sdxl_file)
    assert set(got) == {"clip_l", "clip_g"}
    assert set(got["clip_l"]) == set(clip_l) and set(got["clip_g"]) == set(big_g)
    sd1_file = {f"cond_stage_model.transformer.{k.removeprefix('text_model.')}": v for k, v in clip_l.items()}
    assert set(to_hf_clip(parts(sd1_file)["clip_l"])) == set(clip_l)
    assert parts({"model.diffusion_model.x": torch.zeros(1)}) == {}
