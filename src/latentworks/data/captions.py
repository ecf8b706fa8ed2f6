"""Captions as people type them: the parts of a tagged caption, training-time augmentation, and the prompt
forms an evaluation scores.

A tagged dataset (the emoji data, or any dataset that stores ``labels``/``tags``/``styles`` columns) has
one caption per image in a fixed training format, ``"<label>, <tag>, <tag>, <style> style"``. A model
trained only on that format answers only that format: "cat" or "pizza" alone gives shapes. So training
draws, per example and step, one of the forms a user writes:

* the label alone (``"cat face"``);
* the label plus 0..N shuffled tags (``"cat face, pet, face"``);
* with or without the style (``"cat face, google style"``); without it, the style is the model's choice,
  so a prompt with no style gets one from the seed;
* in lower, upper or the original case.

All draws come from a ``torch.Generator`` the caller seeds, so training stays reproducible and
resumable. Columns in a dataset's ``extra``: ``labels`` (str), ``tags`` (str, tags joined by
:data:`TAG_SEPARATOR`), ``styles`` (str, may be empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

TAG_SEPARATOR = "|"
PromptForm = Literal["label", "label+style", "label+tags", "training"]
USER_FORMS: tuple[PromptForm, ...] = ("label", "label+style", "label+tags")


@dataclass(frozen=True)
class CaptionParts:
    """One image's caption, in parts. ``style`` is ``""`` for a dataset without styles."""

    label: str
    tags: tuple[str, ...] = ()
    style: str = ""

    def caption(self, tags: Sequence[str] | None = None, style: bool = True) -> str:
        """``"<label>, <tags...>, <style> style"`` (the training format), with the given ``tags`` (default:
        all) and the style phrase only when ``style`` is true and the parts have one."""
        parts = [self.label, *(self.tags if tags is None else tags)]
        if style and self.style:
            parts.append(f"{self.style} style")
        return ", ".join(parts)


def caption_parts(extra: dict[str, Any], n: int) -> list[CaptionParts] | None:
    """The :class:`CaptionParts` of ``n`` items from a dataset's ``extra`` columns, or None when the
    dataset stores no ``labels`` column (then only its fixed captions are known)."""
    if "labels" not in extra:
        return None
    labels = [str(x) for x in extra["labels"]]
    tags = [str(x) for x in extra["tags"]] if "tags" in extra else [""] * n
    styles = [str(x) for x in extra["styles"]] if "styles" in extra else [""] * n
    if not len(labels) == len(tags) == len(styles) == n:
        raise ValueError(
            f"caption columns hold {len(labels)}/{len(tags)}/{len(styles)} entries for {n} items"
        )
    return [
        CaptionParts(label, tuple(t for t in tag.split(TAG_SEPARATOR) if t), style)
        for label, tag, style in zip(labels, tags, styles)
    ]


def _rand(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))


@dataclass(frozen=True)
class CaptionAugment:
    """Training-time caption forms (module docstring). Probabilities are per example and step.

    Args:
        keep: the caption exactly in the training format.
        label_only: the label alone (no tags, no style).
        max_tags: otherwise, 0..max_tags tags, shuffled.
        style: otherwise, the chance that the style phrase is kept.
        lower, upper: the chance of all lower case / all upper case (else the original case).
    """

    keep: float = 0.2
    label_only: float = 0.2
    max_tags: int = 3
    style: float = 0.6
    lower: float = 0.2
    upper: float = 0.05

    def __post_init__(self) -> None:
        for name in ("keep", "label_only", "style", "lower", "upper"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CaptionAugment.{name} must be in [0, 1], got {v}")
        if self.keep + self.label_only > 1 or self.lower + self.upper > 1:
            raise ValueError("CaptionAugment: keep + label_only and lower + upper must each be <= 1")
        if self.max_tags < 0:
            raise ValueError(f"CaptionAugment.max_tags must be >= 0, got {self.max_tags}")

    def __call__(self, parts: CaptionParts, gen: torch.Generator) -> str:
        u = _rand(gen)
        if u < self.keep:
            text = parts.caption()
        elif u < self.keep + self.label_only:
            text = parts.label
        else:
            k = int(torch.randint(0, min(self.max_tags, len(parts.tags)) + 1, (), generator=gen))
            order = torch.randperm(len(parts.tags), generator=gen)[:k].tolist()
            text = parts.caption([parts.tags[i] for i in order], style=_rand(gen) < self.style)
        c = _rand(gen)
        if c < self.lower:
            return text.lower()
        if c < self.lower + self.upper:
            return text.upper()
        return text


def user_prompt(parts: CaptionParts, form: PromptForm, index: int = 0) -> str:
    """The prompt of ``form`` for an image: ``"label"`` (``"cat face"``), ``"label+style"``
    (``"cat face, google style"``), ``"label+tags"`` (the label and one or two of its tags, no style, the
    tags chosen by ``index`` so a prompt set is varied but fixed), or ``"training"`` (the training format)."""
    if form == "label":
        return parts.label
    if form == "label+style":
        return parts.caption(tags=(), style=True)
    if form == "label+tags":
        if not parts.tags:
            return parts.label
        k = 1 + index % min(2, len(parts.tags))
        start = index % len(parts.tags)
        tags = [parts.tags[(start + j) % len(parts.tags)] for j in range(k)]
        return parts.caption(tags, style=False)
    if form == "training":
        return parts.caption()
    raise ValueError(f"unknown prompt form {form!r}; choose from label, label+style, label+tags, training")
