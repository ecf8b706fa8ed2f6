"""A tiny SD 2.1 unCLIP-H-shaped diffusers StableUnCLIPImg2ImgPipeline (real class-input width 2 x 1024, reduced
depth) on random weights, for the oracle and node tests, and its LDM single-file form with the open_clip image
encoder and the embedding statistics that released unCLIP files carry."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from support.tokenizers import write_clip_tokenizer

EMBED = 1024  # OpenCLIP ViT-H's image embedding width: the real class-input width 2 x 1024
SIZE = 16


def to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP vision names -> open_clip visual names (written independently of the code under test)."""
    out = {
        "class_embedding": sd["vision_model.embeddings.class_embedding"],
        "conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "proj": sd["visual_projection.weight"].t().contiguous(),
    }
    for a, b in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = sd[f"vision_model.{a}.{p}"]
    i = 0
    while f"vision_model.encoder.layers.{i}.mlp.fc1.weight" in sd:
        h, o = f"vision_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[o + f"attn.in_proj_{p}"] = torch.cat([sd[h + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
            out[o + f"attn.out_proj.{p}"] = sd[h + f"self_attn.out_proj.{p}"]
            out[o + f"ln_1.{p}"] = sd[h + f"layer_norm1.{p}"]
            out[o + f"ln_2.{p}"] = sd[h + f"layer_norm2.{p}"]
            out[o + f"mlp.c_fc.{p}"] = sd[h + f"mlp.fc1.{p}"]
            out[o + f"mlp.c_proj.{p}"] = sd[h + f"mlp.fc2.{p}"]
        i += 1
    return out


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def tiny_unclip_pipe(tmp: Path, name: str = "unclip") -> tuple[Path, object]:
    """Save the pipeline as ``tmp/name``; return (folder, pipe), the pipe holding diffusers' truncated SD 2.x
    text encoder (the folder keeps the full tower, which is what our SD 2.x reading expects)."""
    import diffusers
    import transformers

    vocab = write_clip_tokenizer(tmp / "tokenizer_src")
    torch.manual_seed(0)
    unet = _perturb(
        diffusers.UNet2DConditionModel(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(64, 128),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=1024,  # OpenCLIP-H text, as SD 2.x
            attention_head_dim=(
                1,
                2,
            ),  # diffusers: head counts; 64-wide heads as SD 2.x (what detection reads)
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * EMBED,
            norm_num_groups=32,
        ),
        0.02,
    )
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=1024, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        )
    )  # fmt: skip
    image_encoder = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=EMBED, hidden_act="gelu",
        )
    )  # fmt: skip
    normalizer = (
        diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer.StableUnCLIPImageNormalizer(
            embedding_dim=EMBED
        )
    )
    with torch.no_grad():
        normalizer.mean.copy_(torch.randn(1, EMBED) * 0.1)
        normalizer.std.copy_(torch.rand(1, EMBED) + 0.5)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=SIZE,
    )  # fmt: skip
    pipe = diffusers.StableUnCLIPImg2ImgPipeline(
        feature_extractor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        image_encoder=_perturb(image_encoder),
        image_normalizer=normalizer,
        image_noising_scheduler=diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp / "tokenizer_src")),
        text_encoder=_perturb(text),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="linspace",
            prediction_type="v_prediction",
        ),
        vae=_perturb(vae, 0.02),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp / name))
    # diffusers' SD 2.x text encoders drop OpenCLIP-H's last layer (penultimate + final LN); ours reads the full
    # tower's penultimate layer: run diffusers with the truncated copy (as tests/oracle/test_text_encoder_oracle)
    short = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(**{**text.config.to_dict(), "num_hidden_layers": 1})
    )
    short.load_state_dict({k: v for k, v in text.state_dict().items() if ".layers.1." not in k})
    pipe.text_encoder = short.eval()
    return tmp / name, pipe


def unclip_single_file(folder: Path, pipe: object, path: Path) -> Path:
    """The folder as one LDM single file, plus ``embedder.model.visual.*`` and ``noise_augmentor.data_*``."""
    from latentworks.families.load import read_checkpoint, write_single_file

    write_single_file(read_checkpoint(folder), path)
    sd = load_file(str(path))
    visual = to_open_clip(pipe.image_encoder.state_dict())  # type: ignore[attr-defined]
    sd |= {"embedder.model.visual." + k: v.contiguous() for k, v in visual.items()}
    sd["noise_augmentor.data_mean"] = pipe.image_normalizer.mean.detach().clone()  # type: ignore[attr-defined]
    sd["noise_augmentor.data_std"] = pipe.image_normalizer.std.detach().clone()  # type: ignore[attr-defined]
    save_file(sd, str(path))
    return path
