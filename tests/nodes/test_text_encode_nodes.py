"""CLIPTextEncodeSDXL / SDXLRefiner / Flux / SD3: each text reaches its own encoder component (compared with
that component encoding the text alone), the SDXL nodes set the size ids, FLUX's node sets the guidance, and
SD3's empty_padding "none" leaves empty components out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from latentworks import families
from latentworks.checkpoints.lora import LoraTextEncoder
from latentworks.graph import ExecutionContext, OutputCache
from latentworks.models.text.families import make_prompt_encoder
from latentworks.nodes.payloads import ClipPayload
from latentworks.nodes.text_encode import text_encode_nodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "text"))
from test_families import _clip, _t5, _t5_tokenizer  # noqa: E402

NODES = {n.name: n for n in text_encode_nodes()}


def run(name: str, *args: object) -> tuple:
    return NODES[name].execute(ExecutionContext(prompt_id="te", cache=OutputCache()), *args)


@pytest.fixture(scope="module")
def towers() -> dict[str, dict[str, torch.Tensor]]:
    from latentworks.models.text.layouts import hf_to_open_clip

    return {
        "clip_l": _clip(768, projection=True, seed=2),
        "clip_g": hf_to_open_clip(_clip(1280, projection=True, seed=1)),
    }


def test_sdxl_texts_go_to_their_towers_with_size_ids(towers) -> None:
    sdxl = make_prompt_encoder(families.get("sdxl").text, towers)
    (out,) = run(
        "CLIPTextEncodeSDXL", ClipPayload(sdxl), 832, 1216, 16, 32, 1024, 960, "red apple", "cat dog"
    )
    c = out.cond
    assert c.extra["time_ids"].tolist() == [[1216.0, 832.0, 32.0, 16.0, 960.0, 1024.0]]
    l_alone, _ = sdxl.clips[0].encode(["cat dog"])  # type: ignore[attr-defined]
    g_alone, g_pooled = sdxl.clips[1].encode(["red apple"])  # type: ignore[attr-defined]
    torch.testing.assert_close(c.tokens[..., :768], l_alone)
    torch.testing.assert_close(c.tokens[..., 768:], g_alone)
    torch.testing.assert_close(c.pooled, g_pooled)
    same = sdxl.encode(["red apple"])
    (both,) = run(
        "CLIPTextEncodeSDXL", ClipPayload(sdxl), 1024, 1024, 0, 0, 1024, 1024, "red apple", "red apple"
    )
    torch.testing.assert_close(both.cond.tokens, same.tokens)
    wrapped = ClipPayload(LoraTextEncoder(sdxl, []))  # what LoraLoader hands on: encodes with its LoRAs on
    (via_lora,) = run("CLIPTextEncodeSDXL", wrapped, 832, 1216, 16, 32, 1024, 960, "red apple", "cat dog")
    torch.testing.assert_close(via_lora.cond.tokens, c.tokens)
    (ref,) = run("CLIPTextEncodeSDXLRefiner", 2.5, 640, 512, "red apple", ClipPayload(sdxl))
    assert ref.cond.extra["time_ids"].tolist() == [[512.0, 640.0, 0.0, 0.0, 2.5]]


def test_sd3_empty_padding(towers) -> None:
    sd3 = make_prompt_encoder(families.get("sd3").text, towers)
    (padded,) = run("CLIPTextEncodeSD3", ClipPayload(sd3), "", "", "", "empty_prompt")
    torch.testing.assert_close(padded.cond.tokens, sd3.encode([""]).tokens)
    (none,) = run("CLIPTextEncodeSD3", ClipPayload(sd3), "", "", "", "none")
    assert none.cond.tokens.shape == (1, 77, 4096) and not none.cond.tokens.any()
    assert none.cond.pooled is not None and not none.cond.pooled.any()
    (text,) = run("CLIPTextEncodeSD3", ClipPayload(sd3), "red apple", "red apple", "", "none")
    torch.testing.assert_close(
        text.cond.tokens, sd3.encode(["red apple"]).tokens[:, :77]
    )  # no zero T5 padding


def test_flux_clip_l_pooled_t5_tokens_and_guidance(tmp_path: Path, towers) -> None:
    _t5_tokenizer(tmp_path / "tokenizer_2")
    flux = make_prompt_encoder(
        families.get("flux-dev").text, {"clip_l": towers["clip_l"], "t5xxl": _t5()}, tokenizer_dir=tmp_path
    )
    (out,) = run("CLIPTextEncodeFlux", ClipPayload(flux), "cat dog", "a red apple", 2.0)
    assert out.cond.extra["guidance"].tolist() == [2.0]
    torch.testing.assert_close(out.cond.tokens, flux.encode(["a red apple"]).tokens)
    torch.testing.assert_close(out.cond.pooled, flux.encode(["cat dog"]).pooled)


def test_single_prompt_encoder_needs_equal_texts() -> None:
    class One:
        def encode(self, prompts: list[str]):  # noqa: ANN202
            from latentworks.diffusion.conditioning import Conditioning

            return Conditioning(tokens=torch.ones(len(prompts), 2, 4))

    (ok,) = run("CLIPTextEncodeFlux", ClipPayload(One()), "same", "same", 3.5)
    assert ok.cond.tokens.shape == (1, 2, 4)
    with pytest.raises(ValueError, match="reads one prompt"):
        run("CLIPTextEncodeFlux", ClipPayload(One()), "a", "b", 3.5)
