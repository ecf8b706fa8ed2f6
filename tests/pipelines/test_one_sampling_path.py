"""One sampling path: the pipeline, the KSampler node and training previews give bit-identical latents for
the same seed and settings, because all three call pipelines.sampling.denoise_latents with seeds_for."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import ExecutionContext, OutputCache
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload
from latentworks.nodes.sampling import sampling_nodes
from latentworks.pipelines.loading import load_model_folder
from latentworks.pipelines.sampling import NetworkModel, seeds_for
from latentworks.pipelines.text_to_image import Pipeline
from latentworks.training.diffusion import sample_latents

PROMPT = "red apple"


class WordHashEncoder:
    """A deterministic 384-dim stand-in for MiniLM (the tiny models' context size): word -> fixed vector."""

    dim = 384

    def encode(self, prompts: list[str]) -> Conditioning:
        toks = torch.zeros(len(prompts), 4, self.dim)
        for i, p in enumerate(prompts):
            for j, w in enumerate(["<s>", *p.split()][:4]):
                seed = int.from_bytes(hashlib.sha1(w.encode()).digest()[:4], "little")
                toks[i, j] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
        return Conditioning(tokens=toks)


def _three_ways(folder_path: Path, seed: int, sampler: str, batch: int = 2) -> list[torch.Tensor]:
    steps, guidance, scheduler = 3, 2.5, "normal"
    enc = WordHashEncoder()
    folder = load_model_folder(folder_path)
    h, w = folder.resolution

    pipe = Pipeline(folder, enc)
    by_pipeline = pipe(
        PROMPT, steps=steps, guidance=guidance, sampler=sampler, scheduler=scheduler, seed=seed, batch=batch
    ).latents

    ksampler = next(n for n in sampling_nodes() if n.name == "KSampler")
    ctx = ExecutionContext(prompt_id="one-path", cache=OutputCache())
    (latent,) = ksampler.execute(
        ctx, ModelPayload(folder), seed, steps, guidance, sampler, scheduler,
        ConditioningPayload(enc.encode([PROMPT])), ConditioningPayload(enc.encode([""])),
        Latent(pixel_size=(h, w), batch_size=batch),
    )  # fmt: skip

    f = folder.vae.config.downsample_factor
    preview_model = NetworkModel(folder.denoiser_net, folder.prediction, folder.model_sampling)
    by_preview = sample_latents(
        preview_model, enc.encode([PROMPT] * batch), enc.encode([""] * batch),
        (batch, folder.latent_format.channels, h // f, w // f),
        steps=steps, guidance=guidance, seed=seed, sampler=sampler, scheduler=scheduler,
    )  # fmt: skip
    return [by_pipeline, latent.samples, by_preview]


@pytest.mark.parametrize(
    "which,sampler,seed",
    [("tiny_model", "euler_ancestral", 3), ("tiny_flow_model", "dpmpp_2m", 2**63 - 1)],
)
def test_pipeline_node_and_training_preview_give_identical_latents(request, which, sampler, seed):
    folder_path = request.getfixturevalue(which)
    a, b, c = _three_ways(folder_path, seed, sampler)
    assert a.shape == b.shape == c.shape and a.shape[0] == 2
    assert torch.equal(a, b), "pipeline and KSampler differ"
    assert torch.equal(a, c), "pipeline and training preview differ"
    # The comparison has teeth: samples of the batch differ, and another seed changes the result.
    assert not torch.equal(a[0], a[1])
    other = _three_ways(folder_path, seed - 1, sampler)
    assert (
        not torch.equal(other[0], a) and torch.equal(other[0], other[1]) and torch.equal(other[0], other[2])
    )


def test_seeds_for_is_seed_plus_i_wrapping_at_2_63():
    assert seeds_for(5, 3) == [5, 6, 7]
    assert seeds_for(2**63 - 1, 2) == [2**63 - 1, 0]
    with pytest.raises(ValueError, match="batch must be at least 1"):
        seeds_for(0, 0)
