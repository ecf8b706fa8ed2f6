"""The family registry: one ModelFamily per family, asked by everything else (issue: one place per family)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

import latentworks
from latentworks import families
from latentworks.checkpoints.keymaps.sd_ldm import ours_to_unet_ldm
from latentworks.families import detect as detect_module
from latentworks.families.base import ModelFamily
from latentworks.families.detect import detect_checkpoint
from latentworks.models import unet

SRC = Path(latentworks.__file__).resolve().parent
# "latentworks" is also the product's name (PNG chunks, prefixes, cache folders): not a family reference.
NOT_FAMILY_REFERENCES = {"latentworks"}


def unet_file(config: unet.UNetConfig) -> dict[str, tuple[int, ...]]:
    """The header ({key: shape}) of a single file holding an LDM U-Net of ``config`` (built on meta)."""
    import torch

    with torch.device("meta"):
        sd = unet.UNet(config).state_dict()
    return {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in ours_to_unet_ldm(sd, config).items()}


def _family_words() -> set[str]:
    words = set()
    for family in families.REGISTRY:
        words |= {family.name.lower(), *(a.lower() for a in family.aliases)}
    return words - NOT_FAMILY_REFERENCES


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _preset_keys(tree: ast.AST) -> set[int]:
    """Keys of ``PRESETS = {...}`` in models/: named released network shapes (ARCHITECTURE.md's model presets)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in targets) and isinstance(
                node.value, ast.Dict
            ):
                out |= {id(k) for k in node.value.keys if k is not None}
    return out


def family_literals(source: str, *, is_model_file: bool = False) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``source`` that names a registered family, docstrings excepted."""
    tree = ast.parse(source)
    skip = _docstring_nodes(tree) | (_preset_keys(tree) if is_model_file else set())
    words = _family_words()
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and node.value.lower() in words
    ]


def test_the_checker_finds_a_family_literal() -> None:
    code = 'def f(x):\n    """sd1 in a docstring is fine."""\n    return x == "sdxl" or x == "SD15"\n'
    assert family_literals(code) == [(3, "sdxl"), (3, "SD15")]
    assert family_literals('PRESETS = {"sd15": 1}\n', is_model_file=True) == []
    assert family_literals('PRESETS = {"sd15": 1}\n') == [(1, "sd15")]


def test_no_family_name_literals_outside_the_family_modules() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "families":
            continue
        hits = family_literals(path.read_text(), is_model_file=rel.parts[0] == "models")
        found += [f"{rel}:{line}: {text!r}" for line, text in hits]
    assert not found, "family names spelled outside latentworks/families/:\n" + "\n".join(found)


def test_names_are_unique_and_aliases_resolve() -> None:
    assert len(families.names()) == len(set(families.names()))
    for family in families.REGISTRY:
        assert families.get(family.name) is family
        for alias in family.aliases:
            assert families.get(alias.upper()) is family
    assert families.get("sd15").name == "sd1" and families.get("flux").name == "flux-dev"
    assert families.get(None).name == "latentworks"
    with pytest.raises(ValueError, match=r"unknown model family 'sd9'; known: sd1, sd2, sd2-v, sdxl"):
        families.get("sd9")


def test_every_detected_family_is_complete() -> None:
    for family in families.REGISTRY:
        if family.architecture is None:
            continue
        arch = family.architecture
        assert arch.config_from_original is not None and arch.from_original is not None, family
        assert family.latent_format is not None and family.text is not None, family
        assert set(family.text.required) <= set(family.text.components), family
        if family.diffusers is not None:
            assert set(family.diffusers.text_slots.values()) == set(family.text.components), family
        assert family.comfy is not None and family.comfy.clip_type, family
        h, w = family.generation.resolution
        # a whole number of 2x2-packed 8x latents at least (Qwen-Image's native 1:1 size is 1328 = 83 x 16)
        assert h % 16 == 0 and w % 16 == 0, family


def test_prediction_moves_between_the_two_sd2_families() -> None:
    sd2, sd2_v = families.get("sd2"), families.get("sd2-v")
    assert families.with_prediction(sd2, "v") is sd2_v and families.with_prediction(sd2_v, "eps") is sd2
    assert (
        families.with_prediction(sd2, "eps") is sd2
        and families.with_prediction(families.get("sd1"), "v").name == "sd1"
    )
    assert (sd2.generation.resolution, sd2_v.generation.resolution) == ((512, 512), (768, 768))
    assert sd2.text == sd2_v.text and sd2.latent_format == sd2_v.latent_format


def test_pipeline_class_names_the_family_when_there_is_no_network() -> None:
    assert families.by_pipeline_class({"_class_name": "StableDiffusionPipeline"}).name == "sd1"  # type: ignore[union-attr]
    xl = {"_class_name": "StableDiffusionXLImg2ImgPipeline"}
    assert families.by_pipeline_class(xl).name == "sdxl"  # type: ignore[union-attr]
    refiner = families.by_pipeline_class({**xl, "requires_aesthetics_score": True})
    assert refiner is not None and refiner.name == "sdxl-refiner"
    assert families.by_pipeline_class({"_class_name": "KandinskyPipeline"}) is None


def test_a_new_family_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A U-Net with 512-wide cross-attention matches no released family; registering one new ModelFamily (no
    other change) makes detection, its text recipe and its behaviour available."""
    odd = replace(unet.PRESETS["sd15"], context_dim=512)
    with pytest.raises(ValueError, match="matches no known family"):
        detect_checkpoint(unet_file(odd))
    sd1 = families.get("sd1")
    new = ModelFamily(
        name="sd1-512ctx",
        title="an SD 1.x fine-tune with a 512-wide text encoder",
        architecture=sd1.architecture,
        matches=lambda c: isinstance(c, unet.UNetConfig) and c.context_dim == 512,
        latent_format=sd1.latent_format,
        prediction="eps",
        sampling=sd1.sampling,
        generation=replace(sd1.generation, resolution=(384, 384)),
        text=sd1.text,
    )
    monkeypatch.setattr(detect_module, "REGISTRY", (*families.REGISTRY, new))
    found = detect_checkpoint(unet_file(odd))
    assert found.family is new and found.variant == "sd1-512ctx"
    assert found.denoiser_config.context_dim == 512 and found.denoiser_config.channels == odd.channels
    assert found.family.generation.resolution == (384, 384)
