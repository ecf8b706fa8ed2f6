"""Prompt following measured by a classifier that never sees the prompt.

A small CNN is trained on real images to predict label columns of a dataset (for the emoji data: the
emoji's ``subcategories``, e.g. ``animal-mammal``, and its ``styles``). Applied to generated images, its
top-1 agreement with the prompted image's labels says whether the model drew what was asked, without
trusting the caption. The same classifier applied to real images it was not trained on gives the ceiling
that the classifier itself allows, which is the figure to compare with.

Every random draw (initialisation, batch order, the small translations used as augmentation) comes from
a ``torch.Generator`` seeded by the caller, so a score is reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Net(nn.Module):
    """Three conv stages and global average pooling; one linear head per label column."""

    def __init__(self, num_classes: Mapping[str, int], width: int = 48) -> None:
        super().__init__()
        self.width = w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.GroupNorm(8, w),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.GroupNorm(8, 4 * w),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, n) for k, n in num_classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {k: head(h) for k, head in self.heads.items()}


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Each image translated by up to ``max_shift`` pixels (white fill: emoji sit on white)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@dataclass(frozen=True)
class LabelClassifier:
    """A trained classifier: :meth:`predict` gives, per label column, the predicted class names."""

    net: _Net
    classes: Mapping[str, tuple[str, ...]]

    def save(self, path: str | Path) -> None:
        """Weights and class names in one safetensors file (written atomically)."""
        from safetensors.torch import save

        from latentworks.atomic import atomic_write_bytes

        meta = {
            "classes": json.dumps({k: list(v) for k, v in self.classes.items()}),
            "width": str(self.net.width),
        }
        state = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        atomic_write_bytes(save(state, metadata=meta), path)

    @classmethod
    def load(cls, path: str | Path) -> LabelClassifier:
        """A classifier :meth:`save` wrote."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        classes = {k: tuple(v) for k, v in json.loads(meta["classes"]).items()}
        net = _Net({k: len(v) for k, v in classes.items()}, int(meta["width"]))
        net.load_state_dict(load_file(str(path)))
        return cls(net.eval(), classes)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch: int = 500) -> dict[str, np.ndarray]:
        """Predicted labels of uint8 (N, H, W, 3) ``images``, per column."""
        self.net.eval()
        out: dict[str, list[np.ndarray]] = {k: [] for k in self.classes}
        for i in range(0, len(images), batch):
            logits = self.net(_to_input(images[i : i + batch]))
            for k, names in self.classes.items():
                out[k].append(np.asarray(names)[logits[k].argmax(1).numpy()])
        return {k: np.concatenate(v) if v else np.asarray([], dtype=np.str_) for k, v in out.items()}


def fit_label_classifier(
    images: np.ndarray,
    labels: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    epochs: int = 12,
    batch: int = 128,
    lr: float = 2e-3,
    max_shift: int = 2,
    width: int = 48,
) -> LabelClassifier:
    """Train a :class:`LabelClassifier` on uint8 (N, H, W, 3) real ``images`` for each column of
    ``labels`` (N class names each). Cross-entropy summed over the columns, AdamW, cosine decay. ``width``:
    channels of the first stage (the network has ~40 * width**2 weights)."""
    gen = torch.Generator().manual_seed(seed)
    classes = {k: tuple(sorted({str(v) for v in col})) for k, col in labels.items()}
    targets = {
        k: torch.as_tensor([classes[k].index(str(v)) for v in col], dtype=torch.long)
        for k, col in labels.items()
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=gen)))
        net = _Net({k: len(v) for k, v in classes.items()}, width)
    x_all = _to_input(images)
    n = len(x_all)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * ((n + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            logits = net(_shift(x_all[idx], gen, max_shift))
            loss = sum(F.cross_entropy(logits[k], targets[k][idx]) for k in classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            sched.step()
    return LabelClassifier(net.eval(), classes)


@dataclass(frozen=True)
class ClassifierScore:
    """Top-1 agreement of the classifier's prediction with the prompted image's label, on generated
    images and, as the ceiling, on the real images themselves (which the classifier did not train on)."""

    column: str
    n: int
    generated: float
    real: float
    chance: float

    def line(self) -> str:
        return (
            f"{self.column} top-1 {self.generated:.3f} (real images {self.real:.3f}, chance {self.chance:.3f}, "
            f"N={self.n})"
        )


def score_classifier(
    classifier: LabelClassifier,
    real: np.ndarray,
    fake: np.ndarray,
    labels: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray] | None = None,
) -> tuple[ClassifierScore, ...]:
    """:class:`ClassifierScore` per column of ``labels`` (the prompted images' labels). ``masks[column]``
    restricts a column to some prompts (e.g. style only where the prompt names a style)."""
    pr, pf = classifier.predict(real), classifier.predict(fake)
    out = []
    for k, col in labels.items():
        if k not in classifier.classes:
            continue
        col = np.asarray(col).astype(str)
        m = np.ones(len(col), bool) if masks is None or k not in masks else np.asarray(masks[k], bool)
        if not m.any():
            continue
        _, counts = np.unique(col[m], return_counts=True)
        out.append(
            ClassifierScore(
                column=k,
                n=int(m.sum()),
                generated=float((pf[k][m] == col[m]).mean()),
                real=float((pr[k][m] == col[m]).mean()),
                chance=float(((counts / m.sum()) ** 2).sum()),
            )
        )
    return tuple(out)
