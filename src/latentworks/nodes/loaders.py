"""Split-file loader nodes, with ComfyUI's names, inputs and categories: UNETLoader, CLIPLoader, DualCLIPLoader,
TripleCLIPLoader, VAELoader, LoraLoaderModelOnly, CLIPSetLastLayer.

A ComfyUI user with separate files keeps the diffusion model in ``models/diffusion_models`` (or the older
``models/unet``), text encoders in ``models/text_encoders`` (or ``models/clip``) and VAEs in ``models/vae``.

- UNETLoader reads the denoiser alone, detects its family from the tensor shapes and gives a MODEL whose
  folder has no VAE (``ModelFolder.vae`` is None); the sampler sizes empty latents by the families' 8x factor.
- CLIPLoader / DualCLIPLoader / TripleCLIPLoader pick the family by ComfyUI's ``type`` through the registry
  (``ComfyNames.clip_type``); where several families share a type (``stable_diffusion``: SD 1.x and 2.x;
  ``sdxl``: base and refiner) the first registered family whose text recipe the given files satisfy wins
  (CLIP-L -> SD 1.x, OpenCLIP-H -> SD 2.x). The family's recipe builds the prompt encoder.
- VAELoader reads only the VAE. A VAE file does not say which family's latent scale and shift go with it, so
  its VAE payload has no latent format; VAEDecode takes the format of the model that sampled the latent.

Schemas follow ComfyUI's ``nodes.py`` and ``comfy_extras/nodes_sd3.py`` (inputs, choices, defaults); the
categories are the ones ComfyUI used through 2025 (``advanced/loaders`` for the split loaders, ``loaders``
for VAE and LoRA, ``conditioning`` for CLIPSetLastLayer), like our other loaders'; newer ComfyUI files them all
under ``model/loaders``. The CLIP ``type`` choice lists are ComfyUI's complete lists so that workflows
validate; types no registered family uses fail when the node runs, with the supported ones named.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentworks import families
from latentworks.families.comfy import CLIP_TYPES, DUAL_CLIP_TYPES, TRIPLE_CLIP_TYPE
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nn.quant import fp8_compute_available
from latentworks.nodes.devices import load_device
from latentworks.nodes.payloads import ClipPayload, ModelPayload, VAEPayload

WEIGHT_SUFFIXES = (".safetensors", ".gguf")  # .gguf: ComfyUI-GGUF's quantized diffusion models

# ComfyUI's folders per kind, in the order names are looked up (the first is where new files go).
DIFFUSION_FOLDERS = ("diffusion_models", "unet")
TEXT_ENCODER_FOLDERS = ("text_encoders", "clip")
VAE_FOLDERS = ("vae",)

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")

DEVICES = ("default", "cpu")


def list_weights(models_dir: Path | None, folders: Sequence[str]) -> list[str]:
    """Every weight file under ``models_dir/<folder>`` for each of ``folders`` (subfolders included), as a
    '/'-separated path relative to its folder; a name found in two folders is listed once."""
    names: set[str] = set()
    for folder in folders:
        root = None if models_dir is None else Path(models_dir) / folder
        if root is not None and root.is_dir():
            names |= {
                p.relative_to(root).as_posix()
                for p in root.rglob("*")
                if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES
            }
    return sorted(names)


def resolve_weights(models_dir: Path | None, folders: Sequence[str], name: str, *, what: str) -> Path:
    """The file ``name`` inside the first of ``models_dir/<folder>`` that holds it; a name that resolves
    outside its folder (``..``, an absolute path, a symlink out) is refused."""
    if models_dir is None:
        raise FileNotFoundError(
            f"{what} {name!r}: the server has no models folder; start it with --models-dir"
        )
    roots = [(Path(models_dir) / f).resolve() for f in folders]
    for root in roots:
        path = (root / name).resolve()
        if root not in path.parents:
            raise FileNotFoundError(f"{what} {name!r} is not inside {root}")
        if path.is_file():
            return path
    where = " or ".join(str(r) for r in roots)
    raise FileNotFoundError(
        f"{what} {name!r} is not a file in {where}; put the .safetensors (or .gguf) file there"
    )


def t5_tokenizer_beside(path: Path) -> Path | None:
    """A T5 ``tokenizer.json`` kept next to a weights file: ``<name>.tokenizer.json`` for that file, else
    ``t5_tokenizer.json`` for the whole folder; None when there is neither. (T5's tokenizer cannot be
    bundled; SD3 and FLUX files read through the loader nodes find it here.)"""
    for candidate in (path.with_name(path.stem + ".tokenizer.json"), path.parent / "t5_tokenizer.json"):
        if candidate.is_file():
            return candidate
    return None


def _device(ctx: Any, device: str = "default") -> Any:
    return load_device(ctx, device)  # host RAM under a memory manager with a budget


def load_diffusion_model(ctx: Any, path: Path, weight_dtype: str = "default") -> ModelPayload:
    """A MODEL from a diffusion-model file alone (family detected from its shapes; no VAE).

    ``weight_dtype`` (ComfyUI's choices, :data:`WEIGHT_DTYPES`): ``default`` keeps the file's storage (fp8 and GGUF
    weights stay quantized, dequantized per layer when used); the fp8 choices store the weight matrices in that
    fp8 format as they are read (``_fast`` asks for fp8 matmul, which latentworks does not do: it upcasts).
    """
    from latentworks.families.load import read_checkpoint
    from latentworks.pipelines.loading import model_from_parts

    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if weight_dtype.endswith("_fast") and fp8_compute_available(
        _device(ctx)
    ):  # elsewhere loading warns anyway
        warnings.warn(
            f"weight_dtype {weight_dtype!r}: latentworks has no fp8 matmul yet; the weights are stored in fp8 and "
            "upcast per layer, as with 'fp8_e4m3fn'",
            stacklevel=2,
        )
    parts = read_checkpoint(path, weight_dtype=weight_dtype)
    return ModelPayload(model_from_parts(parts, device=_device(ctx), without_vae=True))


def family_for_clip_type(clip_type: str, components: Sequence[str]) -> families.ModelFamily:
    """The registered family whose ComfyUI CLIP type is ``clip_type`` and whose text recipe ``components``
    (``clip_l``, ``t5xxl``, ``qwen3_4b``...) can serve: the first such in registry order."""
    typed = [
        f for f in families.REGISTRY if f.comfy is not None and f.comfy.clip_type == clip_type and f.text
    ]
    if not typed:
        known = sorted({f.comfy.clip_type for f in families.REGISTRY if f.comfy is not None and f.text})
        raise ValueError(
            f"CLIP type {clip_type!r} is not supported yet (no registered model family uses it); "
            f"supported: {', '.join(known)}"
        )
    have = set(components)
    for family in typed:
        assert family.text is not None
        if set(family.text.required) <= have and have <= set(family.text.components):
            return family
    wants = "; ".join(
        f"{f.title}: {', '.join(f.text.components)}" for f in typed if f.text is not None
    )  # fmt: skip
    raise ValueError(
        f"CLIP type {clip_type!r} with text encoders {sorted(have)} fits no family of that type "
        f"({wants}); check the files and the type"
    )


def load_text_encoders(
    ctx: Any, paths: Sequence[Path], clip_type: str, device: str = "default"
) -> ClipPayload:
    """A CLIP payload: the prompt encoder of ``clip_type``'s family from text-encoder files (CLIP, T5, Qwen3,
    Qwen2.5-VL)."""
    from latentworks.families.load import _text_encoder_kind, open_weights
    from latentworks.models.text.families import make_prompt_encoder

    components: dict[str, Mapping[str, Any]] = {}
    tokenizer: Path | None = None
    for path in paths:
        kind, sd = _text_encoder_kind(open_weights(path), path.name)
        if kind in components:
            raise ValueError(f"two {kind} text encoders given ({path.name} is the second); give one of each")
        components[kind] = sd
        if kind == "t5xxl":
            tokenizer = t5_tokenizer_beside(path)
    family = family_for_clip_type(clip_type, list(components))
    assert family.text is not None
    encoder = make_prompt_encoder(
        family.text,
        {k: dict(v) for k, v in components.items()},
        tokenizer_dir=tokenizer,
        device=_device(ctx, device),
    )
    return ClipPayload(encoder, on_host=device == "cpu")


def load_vae(ctx: Any, path: Path) -> VAEPayload:
    """A VAE payload from a VAE file alone (LDM or diffusers layout; its latent format comes from the model), or
    the Qwen-Image VAE (``qwen_image_vae.safetensors``; only Qwen-Image uses it, so its format is known)."""
    from latentworks.checkpoints.io import build_on_meta
    from latentworks.families.load import open_weights, read_vae, vae_network
    from latentworks.models.qwenimage_vae import QwenImageVAEConfig

    config, state = read_vae(open_weights(path), source=path.name)
    vae = build_on_meta(vae_network(config), config, state, device=_device(ctx))
    own = None
    if isinstance(config, QwenImageVAEConfig):  # the family whose latents carry per-channel statistics
        own = next(
            (
                f.latent_format
                for f in families.REGISTRY
                if f.latent_format is not None
                and f.latent_format.channel_mean
                and f.latent_format.channels == config.z_dim
            ),
            None,
        )
    return VAEPayload(vae, own)


def set_last_layer(clip: ClipPayload, stop_at_clip_layer: int) -> ClipPayload:
    """``clip`` reading the hidden states of layer ``stop_at_clip_layer`` (-1 last, -2 penultimate...) of each
    CLIP tower, as ComfyUI's CLIPSetLastLayer; a tower with fewer layers keeps its last (as ComfyUI does).
    Each tower keeps its family's final-LayerNorm choice. The networks are shared, not copied."""
    from latentworks.checkpoints.lora import LoraTextEncoder
    from latentworks.models.text.families import PromptEncoder

    if isinstance(clip.encoder, LoraTextEncoder):  # a LoraLoader upstream: re-wrap the new encoder
        inner = set_last_layer(dataclasses.replace(clip, encoder=clip.encoder.base), stop_at_clip_layer)
        return dataclasses.replace(clip, encoder=LoraTextEncoder(inner.encoder, clip.encoder.loras))
    encoder = clip.encoder
    if not isinstance(encoder, PromptEncoder) or not encoder.clips:
        raise ValueError(
            f"CLIPSetLastLayer works on CLIP text encoders; this one ({type(encoder).__name__}) has no CLIP "
            "layers to stop at (Z-Image's Qwen3, T5-only and our own MiniLM encoders are not supported)"
        )
    branches = []
    for branch in encoder.clips:
        layers = int(branch.model.config.num_hidden_layers)
        layer = stop_at_clip_layer if -stop_at_clip_layer <= layers else -1
        branches.append(dataclasses.replace(branch, layer=layer))
    new = PromptEncoder(
        encoder.family,
        clips=branches,
        pooled_from=encoder.pooled_from,
        t5=encoder.t5,
        t5_tokens_only=encoder.t5_tokens_only,
        pad_features_to=encoder.pad_features_to,
        zero_t5_length=encoder.zero_t5_length,
        zero_empty_prompt=encoder.zero_empty_prompt,
    )
    return dataclasses.replace(clip, encoder=new)


def split_loader_nodes(models_dir: Path | None) -> list[NodeSpec]:
    def unet_loader(ctx: Any, unet_name: str, weight_dtype: str = "default") -> tuple[Any, ...]:
        path = resolve_weights(models_dir, DIFFUSION_FOLDERS, unet_name, what="diffusion model")
        return (load_diffusion_model(ctx, path, weight_dtype),)

    def te(name: str) -> Path:
        return resolve_weights(models_dir, TEXT_ENCODER_FOLDERS, name, what="text encoder")

    def clip_loader(ctx: Any, clip_name: str, type: str, device: str = "default") -> tuple[Any, ...]:  # noqa: A002
        return (load_text_encoders(ctx, [te(clip_name)], type, device),)

    def dual_clip_loader(
        ctx: Any,
        clip_name1: str,
        clip_name2: str,
        type: str,
        device: str = "default",  # noqa: A002
    ) -> tuple[Any, ...]:
        return (load_text_encoders(ctx, [te(clip_name1), te(clip_name2)], type, device),)

    def triple_clip_loader(
        ctx: Any, clip_name1: str, clip_name2: str, clip_name3: str, device: str = "default"
    ) -> tuple[Any, ...]:
        paths = [te(clip_name1), te(clip_name2), te(clip_name3)]
        return (load_text_encoders(ctx, paths, TRIPLE_CLIP_TYPE, device),)

    def vae_loader(ctx: Any, vae_name: str) -> tuple[Any, ...]:
        return (load_vae(ctx, resolve_weights(models_dir, VAE_FOLDERS, vae_name, what="VAE")),)

    def lora_model_only(
        ctx: Any, model: ModelPayload, lora_name: str, strength_model: float
    ) -> tuple[Any, ...]:
        from latentworks.checkpoints.lora import add_lora
        from latentworks.nodes.models import _lora_path

        if strength_model == 0:
            return (model,)
        folder, _, _ = add_lora(model.folder, None, _lora_path(models_dir, lora_name), strength_model, 0.0)
        return (dataclasses.replace(model, folder=folder),)

    def clip_set_last_layer(ctx: Any, clip: ClipPayload, stop_at_clip_layer: int) -> tuple[Any, ...]:
        return (set_last_layer(clip, int(stop_at_clip_layer)),)

    def files(folders: Sequence[str]) -> Any:
        return lambda: list_weights(models_dir, folders)

    I = input_spec  # noqa: E741, N806

    text_encoders = files(TEXT_ENCODER_FOLDERS)
    device = I("device", "COMBO", choices=DEVICES, default="default", optional=True, extra={"advanced": True})
    from latentworks.nodes.models import list_loras

    return [
        NodeSpec(
            name="UNETLoader",
            display_name="Load Diffusion Model",
            category="advanced/loaders",
            description=(
                "Load a diffusion model file alone (models/diffusion_models or models/unet); its family is "
                "detected from the weights. Load its text encoders and VAE with CLIPLoader and VAELoader."
            ),
            execute=unet_loader,
            inputs=(
                I("unet_name", "COMBO", choices=files(DIFFUSION_FOLDERS)),
                I(
                    "weight_dtype",
                    "COMBO",
                    choices=WEIGHT_DTYPES,
                    default="default",
                    extra={"advanced": True},
                ),
            ),
            outputs=(OutputSpec(type="MODEL"),),
        ),
        NodeSpec(
            name="CLIPLoader",
            display_name="Load CLIP",
            category="advanced/loaders",
            description=(
                "Load a text encoder file (models/text_encoders or models/clip) for the model family of "
                "`type`. Recipes: stable_diffusion: clip-l (SD 1.x) or clip-h (SD 2.x); lumina2: qwen3 4B "
                "(Z-Image); qwen_image: qwen2.5-vl 7B (Qwen-Image)."
            ),
            execute=clip_loader,
            inputs=(
                I("clip_name", "COMBO", choices=text_encoders),
                I("type", "COMBO", choices=CLIP_TYPES, default="stable_diffusion"),
                device,
            ),
            outputs=(OutputSpec(type="CLIP"),),
        ),
        NodeSpec(
            name="DualCLIPLoader",
            category="advanced/loaders",
            description=(
                "Load two text encoder files for the model family of `type`. Recipes: sdxl: clip-l, clip-g; "
                "sd3: clip-l, clip-g; flux: clip-l, t5."
            ),
            execute=dual_clip_loader,
            inputs=(
                I("clip_name1", "COMBO", choices=text_encoders),
                I("clip_name2", "COMBO", choices=text_encoders),
                I("type", "COMBO", choices=DUAL_CLIP_TYPES, default=DUAL_CLIP_TYPES[0]),
                device,
            ),
            outputs=(OutputSpec(type="CLIP"),),
        ),
        NodeSpec(
            name="TripleCLIPLoader",
            category="advanced/loaders",
            description="Load three text encoder files. Recipe: sd3: clip-l, clip-g, t5.",
            execute=triple_clip_loader,
            inputs=(
                I("clip_name1", "COMBO", choices=text_encoders),
                I("clip_name2", "COMBO", choices=text_encoders),
                I("clip_name3", "COMBO", choices=text_encoders),
                device,
            ),
            outputs=(OutputSpec(type="CLIP"),),
        ),
        NodeSpec(
            name="VAELoader",
            display_name="Load VAE",
            category="loaders",
            description=(
                "Load a VAE file from models/vae (LDM or diffusers layout). Its latent scale and shift come "
                "from the model that samples the latent."
            ),
            execute=vae_loader,
            inputs=(I("vae_name", "COMBO", choices=files(VAE_FOLDERS)),),
            outputs=(OutputSpec(type="VAE"),),
        ),
        NodeSpec(
            name="LoraLoaderModelOnly",
            category="loaders",
            description="Add a LoRA (models/loras) to the diffusion model only; the upstream model is unchanged.",
            execute=lora_model_only,
            inputs=(
                I("model", "MODEL"),
                I("lora_name", "COMBO", choices=lambda: list_loras(models_dir)),
                I("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01),
            ),
            outputs=(OutputSpec(type="MODEL"),),
        ),
        NodeSpec(
            name="CLIPSetLastLayer",
            display_name="CLIP Set Last Layer",
            category="conditioning",
            description="Read the prompt from an earlier CLIP layer (-1 last, -2 penultimate: 'clip skip 2').",
            execute=clip_set_last_layer,
            inputs=(
                I("clip", "CLIP"),
                I("stop_at_clip_layer", "INT", default=-1, min=-24, max=-1, step=1),
            ),
            outputs=(OutputSpec(type="CLIP"),),
        ),
    ]


__all__ = [
    "CLIP_TYPES",
    "DUAL_CLIP_TYPES",
    "family_for_clip_type",
    "list_weights",
    "resolve_weights",
    "split_loader_nodes",
]
