"""What a model family is, as data: :class:`ModelFamily` and the pieces it is made of.

A *family* is a kind of checkpoint people have (SD 1.x, SDXL, FLUX.1-dev, ...) or our own model folders.
Everything the rest of latentworks needs to know about one lives in one frozen :class:`ModelFamily`,
defined in the family's own module (:mod:`latentworks.families.sd1`, ...) and listed once in the registry
(:mod:`latentworks.families`). Loaders, pipelines, nodes and the CLI ask the registry; none of them spells a
family name.

A family is built from:

- an :class:`Architecture`: the network (class and config class), and how its weights are laid out in the
  original single files and in diffusers folders (key maps and config maps, plain functions from
  :mod:`latentworks.checkpoints.keymaps`); several families share one (SD 1.x, 2.x and XL are all U-Nets);
- detection: a function that recognises the family's denoiser from tensor names and shapes;
- the text-encoder recipe (:class:`~latentworks.models.text.families.TextRecipe` for CLIP/T5 families,
  :class:`~latentworks.models.text.families.QwenRecipe` for Z-Image);
- the latent format, the prediction and the model-sampling spec;
- generation behaviour (:class:`Generation`: native size, defaults, extra conditioning vectors);
- names other tools use: diffusers' pipeline classes and folder slots (:class:`DiffusersNames`), ComfyUI's
  CLIPLoader type and model-sampling node (:class:`ComfyNames`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from latentworks.diffusion.denoisers import SamplingSpec
from latentworks.diffusion.guidance import GuidanceNorm
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.models.text.families import AnyTextRecipe, QwenRecipe

Shapes = Mapping[str, Sequence[int]]
StateDict = Mapping[str, Tensor]
# Which extra vectors a family's denoiser takes beside the prompt (see pipelines.families):
# "size-ids": SDXL base's (orig h, orig w, crop top, crop left, target h, target w);
# "size-aesthetic-ids": the SDXL refiner's (orig h, orig w, crop top, crop left, aesthetic score).
SizeConditioning = Literal["size-ids", "size-aesthetic-ids"]


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """A denoising network and its weight layouts.

    Attributes:
        name: what ``model.json`` calls it (``denoiser.architecture``).
        network / config: the ``nn.Module`` class and its frozen config dataclass.
        markers: keys (relative to the denoiser prefix) whose presence in a single file says "this network".
        config_from_original: ``(shapes, source) -> config`` read from an original-layout state dict's shapes.
        original_layout: the name of the layout released single files use (``ldm``, ``sai``, ``bfl``).
        from_original / to_original: key maps ``(state_dict, config) -> state_dict`` between that layout and
            ours (None: no original layout, e.g. our own DiT).
        diffusers_folder: ``unet`` or ``transformer``; diffusers_class: its ``_class_name``.
        config_from_diffusers / config_to_diffusers: config.json <-> our config.
        from_diffusers / to_diffusers: key maps between diffusers' layout and ours.
    """

    name: str
    network: type[nn.Module]
    config: type
    markers: tuple[str, ...] = ()
    config_from_original: Callable[[Mapping[str, tuple[int, ...]], str], Any] | None = None
    original_layout: str | None = None
    from_original: Callable[[StateDict, Any], dict[str, Tensor]] | None = None
    to_original: Callable[[StateDict, Any], dict[str, Tensor]] | None = None
    diffusers_folder: str | None = None
    diffusers_class: str | None = None
    config_from_diffusers: Callable[..., Any] | None = None
    config_to_diffusers: Callable[..., dict[str, Any]] | None = None
    from_diffusers: Callable[[StateDict, Any], dict[str, Tensor]] | None = None
    to_diffusers: Callable[[StateDict, Any], dict[str, Tensor]] | None = None


@dataclass(frozen=True, kw_only=True)
class Generation:
    """Generation-time behaviour.

    Attributes:
        resolution: native (height, width) in pixels.
        defaults: steps, guidance, sampler, scheduler used when the caller gives none.
        size_conditioning: extra size vectors the denoiser takes (see :data:`SizeConditioning`); the refiner's
            aesthetic score is 6.0 for the prompt and 2.5 for the negative prompt (its training convention).
        distilled_guidance: the guidance scale goes into ``cond.extra["guidance"]`` and the sampler runs
            without classifier-free guidance (one network call per step), as FLUX.1-dev.
        guidance_norm: the release's renormalisation of the guided prediction (Qwen-Image's true CFG), applied
            by the pipeline (as diffusers does); workflows get it only through a CFGNorm-style node, as in
            ComfyUI. None: plain CFG.
        edit_text: the prompt recipe when an input image is given (Qwen-Image-Edit: the image is read by the
            text encoder's vision tower and its latents join the denoiser's sequence); None: no image input.
        edit_area: the pixel area the input image is resized to (keeping its aspect ratio, sides multiples
            of 32), which is also the output size unless one is given.
        edit_plus_text: the prompt recipe for several input images (Qwen-Image-Edit-2509: each image announced
            as "Picture N:" before the prompt); None: one input image at most.
        edit_plus_vision_area: the pixel area each of those images is resized to for the vision tower (its
            latents still use ``edit_area``).
        class_input_dim: width of the denoiser's class input (SD 2.1 unCLIP's augmented image embedding,
            ``cond.extra["class_input"]``); a conditioning without one gets zeros. 0: none.
    """

    resolution: tuple[int, int]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    size_conditioning: SizeConditioning | None = None
    distilled_guidance: bool = False
    guidance_norm: GuidanceNorm | None = None
    edit_text: QwenRecipe | None = None
    edit_area: int = 1024 * 1024
    edit_plus_text: QwenRecipe | None = None
    edit_plus_vision_area: int = 384 * 384
    class_input_dim: int = 0


@dataclass(frozen=True, kw_only=True)
class DiffusersNames:
    """How diffusers names this family's folders.

    Attributes:
        pipeline_classes: ``model_index.json`` ``_class_name`` values that mean this family; the first is
            written on export.
        text_slots: ``{folder: component}``, e.g. ``{"text_encoder": "clip_l", "text_encoder_2": "clip_g"}``.
        index_extra: extra ``model_index.json`` entries written on export.
        sample_size: the U-Net config's ``sample_size`` written on export (None: not a U-Net).
        requires_aesthetics_score: the ``model_index.json`` flag that tells this family apart from another
            one with the same pipeline class (the SDXL refiner); None: not used.
    """

    pipeline_classes: tuple[str, ...]
    text_slots: Mapping[str, str]
    index_extra: Mapping[str, Any] = field(default_factory=dict)
    sample_size: int | None = None
    requires_aesthetics_score: bool | None = None


@dataclass(frozen=True, kw_only=True)
class ComfyNames:
    """The names ComfyUI uses for this family.

    Attributes:
        clip_type: the ``type`` of CLIPLoader / DualCLIPLoader / TripleCLIPLoader for its text encoders.
        model_sampling_node: the node that sets its model sampling (ModelSamplingDiscrete, ...SD3, ...Flux).
        vae_file: the name of the VAE file ComfyUI's pages give for it, for messages (None: not named).
        gguf_architecture: the ``general.architecture`` ComfyUI-GGUF writes into this family's ``.gguf`` files
            (``flux``, ``lumina2``...); None where it writes none.
    """

    clip_type: str
    model_sampling_node: str
    vae_file: str | None = None
    gguf_architecture: str | None = None


# (config, all shapes, the denoiser prefix, read-one-tensor) -> (variant, prediction)
Inspector = Callable[[Any, Shapes, str, Callable[[str], Tensor] | None], tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    """Everything about one model family (see the module docstring).

    Attributes:
        name: the one canonical name, used in files (``model.json``), the CLI, nodes and docs.
        title: a human-readable name for messages and ``info``.
        aliases: other names accepted on input (``sd15``, ``flux``...).
        architecture: the denoising network and its layouts; None for our own model folders, which name theirs.
        matches: ``config -> bool``: does a network of this config belong to this family? Detection (single
            files and diffusers folders alike) reads the architecture's config from shapes, then asks each
            family of that architecture, in registry order. None: never detected (our own model folders).
        inspect: ``(config, shapes, prefix, get_tensor) -> (variant, prediction)`` for what shapes alone
            cannot say (SD 2.x eps vs v, inpainting variants); None: ``(name, prediction)``.
        by_prediction: ``{prediction: family name}`` when another family is this one with another objective
            (SD 2.x eps <-> SD 2.x v).
        latent_format: channels, scale/shift and preview factors.
        prediction: ``eps`` | ``v`` | ``flow`` (a checkpoint may override it, e.g. SD 2.x v models).
        sampling: the model-sampling spec (``DiscreteSamplingSpec`` | ``FlowSamplingSpec``).
        generation: native size, defaults and extra conditioning.
        text: the prompt-encoder recipe; None for our own models (they name their encoder in model.json).
        single_file_text: ``{component: (key prefix, layout)}`` where an original-layout single file keeps its
            text encoders (``hf`` or ``open_clip`` layout); empty: ComfyUI's ``text_encoders.<name>.`` form.
        single_file_vae_prefix: where the VAE goes when writing a single file.
        single_file_markers: extra tensors written into single files (the A1111 ``v_pred`` marker).
        diffusers: diffusers names, or None when the family has no diffusers form.
        comfy: ComfyUI names, or None.
    """

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    architecture: Architecture | None = None  # None: any (our own folders name theirs in model.json)
    matches: Callable[[Any], bool] | None = None
    inspect: Inspector | None = None
    by_prediction: Mapping[str, str] = field(default_factory=dict)
    latent_format: LatentFormat | None = None
    prediction: str
    sampling: SamplingSpec
    generation: Generation
    text: AnyTextRecipe | None = None
    single_file_text: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    single_file_vae_prefix: str = "first_stage_model."
    single_file_markers: Mapping[str, Callable[[], Tensor]] = field(default_factory=dict)
    diffusers: DiffusersNames | None = None
    comfy: ComfyNames | None = None

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v", "flow"):
            raise ValueError(
                f"family {self.name}: prediction must be eps, v or flow, got {self.prediction!r}"
            )
        if self.matches is not None and (
            self.architecture is None or self.architecture.config_from_original is None
        ):
            raise ValueError(
                f"family {self.name}: detection needs an architecture that reads configs from shapes"
            )

    def __repr__(self) -> str:  # the dataclass repr would print every field, functions included
        return f"ModelFamily({self.name!r})"
