"""Tiny DeepFloyd IF folders for oracle tests (no hub): diffusers' ``IFPipeline`` (stage I) and
``IFSuperResolutionPipeline`` (stage II) layouts with random weights at small widths, a tiny T5 v1.1 encoder
(gated-GELU, as T5-XXL) and a T5 tokenizer folder that transformers' ``T5TokenizerFast`` reads offline.

The U-Nets keep every IF feature: ResNet-only and simple-cross-attention levels, the text projection
(``encoder_hid_proj``), the text pooling added to the time embedding, group-normed added-kv attention,
scale-shift ResBlocks with an output scale, a learned-variance output (6 channels) and, for stage II, the
noise-level class embedding and the 6-channel input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from support.tokenizers import WORDS

T5_DIM = 32  # d_model of the tiny T5 (IF's encoder_hid_dim)
SIZE_I, SIZE_II = 16, 32  # stage I output and stage II output sides


def _unet_config(*, stage: int) -> dict[str, Any]:
    return {
        "sample_size": SIZE_I if stage == 1 else SIZE_II,
        "in_channels": 3 if stage == 1 else 6,
        "out_channels": 6,
        "block_out_channels": [32, 64],
        "layers_per_block": [1, 2] if stage == 1 else 1,
        "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "attention_head_dim": 16,
        "cross_attention_dim": 32,
        "encoder_hid_dim": T5_DIM,
        "encoder_hid_dim_type": "text_proj",
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": 4,
        "class_embed_type": None if stage == 1 else "timestep",
        "cross_attention_norm": "group_norm",
        "act_fn": "gelu",
        "time_embedding_act_fn": "gelu",
        "resnet_time_scale_shift": "scale_shift",
        "resnet_skip_time_act": True,
        "resnet_out_scale_factor": 1.414 if stage == 1 else 1.0,
        "norm_num_groups": 8,
        # stage II attends to the text alone on its attention level and in the middle (as IF-II's release)
        "only_cross_attention": False if stage == 1 else [False, True],
        "mid_block_only_cross_attention": None if stage == 1 else True,
    }


def _scheduler_config(*, stage: int) -> dict[str, Any]:
    return {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "squaredcos_cap_v2",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "variance_type": "learned_range",
        "thresholding": True,
        "dynamic_thresholding_ratio": 0.95,
        "sample_max_value": 1.5 if stage == 1 else 1.0,
        "clip_sample": True,
        "clip_sample_range": 1.0,
    }


def tiny_if_unet(*, stage: int, seed: int = 0):  # noqa: ANN201 - a diffusers UNet2DConditionModel
    """A randomly initialised diffusers IF U-Net; parameters drawn with ``seed`` (zero-initialised layers too)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_config(stage=stage)).eval()
    with torch.no_grad():
        for p in unet.parameters():  # non-default values everywhere, so a mis-mapped key cannot pass
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def write_t5_tokenizer_folder(folder: Path) -> Path:
    """A ``T5TokenizerFast`` folder (tokenizer.json + tokenizer_config.json): a SentencePiece-style Unigram model
    (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``▁`` 3, then ``▁word`` for each of ``WORDS``), Metaspace
    pre-tokenization and ``</s>`` appended, as T5 v1.1's own tokenizer.json is built."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0 - i * 0.01) for i, w in enumerate(WORDS)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), extra_ids=0).save_pretrained(str(folder))
    return folder


def tiny_t5(seed: int = 1):  # noqa: ANN201 - a transformers T5EncoderModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(WORDS) + 4, d_model=T5_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False, dropout_rate=0.0,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


def _write_scheduler(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2))


def write_if_folders(root: Path, *, with_text: bool = True) -> tuple[Path, Path]:
    """Write ``root/IF-I`` and ``root/IF-II`` as diffusers saves them; returns the two folders.

    Stage I holds the T5 encoder and tokenizer; stage II lists neither (``[null, null]``), as people run
    DeepFloyd's stage II with stage I's prompt embeddings. ``with_text=False`` leaves them out of stage I too.
    """
    from safetensors.torch import save_file

    stage1, stage2 = root / "IF-I", root / "IF-II"
    for stage, folder in ((1, stage1), (2, stage2)):
        unet = tiny_if_unet(stage=stage, seed=stage)
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        unet.save_pretrained(str(folder / "unet"))
        _write_scheduler(folder / "scheduler", _scheduler_config(stage=stage))
        index: dict[str, Any] = {
            "_class_name": "IFPipeline" if stage == 1 else "IFSuperResolutionPipeline",
            "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "watermarker": [None, None],
            "requires_safety_checker": False,
        }
        if stage == 2:
            _write_scheduler(
                folder / "image_noising_scheduler",
                {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000,
                 "variance_type": "fixed_small", "clip_sample": False},
            )  # fmt: skip
            index["image_noising_scheduler"] = ["diffusers", "DDPMScheduler"]
        if stage == 1 and with_text:
            t5 = tiny_t5()
            (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
            t5.config.architectures = ["T5EncoderModel"]
            t5.config.to_json_file(str(folder / "text_encoder" / "config.json"))
            state = {
                k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"
            }
            save_file(state, str(folder / "text_encoder" / "model.safetensors"))
            write_t5_tokenizer_folder(folder / "tokenizer")
            index["text_encoder"] = ["transformers", "T5EncoderModel"]
            index["tokenizer"] = ["transformers", "T5TokenizerFast"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return stage1, stage2
