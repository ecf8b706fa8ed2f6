"""Node schemas: typed inputs, typed outputs and the node spec that ties them to an execute function.

A node type is a frozen :class:`NodeSpec` holding its declared inputs/outputs and a pure
``execute(ctx, **inputs)`` function. Specs are registered explicitly into a
:class:`latentworks.graph.registry.NodeRegistry`; nothing here touches global state or torch.

Type strings follow ComfyUI: payload types ("MODEL", "LATENT", "CONDITIONING", "IMAGE", ...) can only
arrive through links; primitive types ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") may also be
literals in the workflow. ``"*"`` accepts anything, and "A,B" accepts either A or B.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Primitive types may be given as literal values in a workflow; every other type must be a link.
PRIMITIVE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

# Hidden input types the executor fills in (ComfyUI names).
HIDDEN_TYPES = frozenset({"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID"})

# Range used for INT inputs that declare no min/max (covers 64-bit unsigned seeds and signed offsets).
INT_LIMIT = 2**64 - 1


@dataclass(frozen=True)
class Preview:
    """An encoded preview image for ``ctx.progress(..., preview=Preview("JPEG", data))``."""

    image_format: str  # "JPEG" or "PNG"
    data: bytes

    def __post_init__(self) -> None:
        if self.image_format not in ("JPEG", "PNG"):
            raise ValueError(f"Preview.image_format must be 'JPEG' or 'PNG', got {self.image_format!r}")


@dataclass(frozen=True)
class NodeResult:
    """What an output node may return instead of a plain tuple.

    ``outputs`` are the values for the declared outputs (in order); ``ui`` is the JSON-serialisable
    dict the server reports in the ``executed`` message and history, e.g.
    ``{"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}``.
    """

    outputs: tuple[Any, ...] = ()
    ui: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """One declared input of a node type.

    Attributes:
        name: keyword passed to ``execute``.
        type: type string, e.g. "MODEL", "INT", "COMBO".
        default, min, max, step: as shown by the editor; min/max are enforced by validation.
        choices: allowed values for "COMBO": a sequence, or a zero-argument callable evaluated each time
            object_info or validation needs it (e.g. listing checkpoint files).
        optional: may be left out; ``execute`` then receives ``default`` (if not None) or nothing.
        hidden: filled by the executor, never by the workflow (type "PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID").
        lazy: only evaluated when the node's ``check_lazy_status`` asks for it.
        multiline: STRING shown as a text area.
        tooltip: help text for the editor.
        extra: further editor options passed through object_info (e.g. {"control_after_generate": True}).
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    optional: bool = False
    hidden: bool = False
    lazy: bool = False
    multiline: bool = False
    tooltip: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # dotted names are ComfyUI's sub-inputs of dynamic inputs ("format.bit_depth"); such nodes take **kwargs
        if not all(part.isidentifier() for part in self.name.split(".")):
            raise ValueError(
                f"input name {self.name!r} must be a Python identifier, or identifiers joined by dots "
                "(it is passed as a keyword)"
            )
        if not self.type:
            raise ValueError(f"input {self.name!r} needs a type string such as 'INT' or 'MODEL'")
        if self.type == "COMBO" and self.choices is None:
            raise ValueError(f"COMBO input {self.name!r} needs choices (a sequence or a callable)")
        if self.hidden and self.type not in HIDDEN_TYPES:
            raise ValueError(f"hidden input {self.name!r} must have a type in {sorted(HIDDEN_TYPES)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"input {self.name!r}: min {self.min} is larger than max {self.max}")

    def resolved_choices(self) -> list[Any]:
        """The COMBO choices as a list (calls the callable if choices is one)."""
        if self.choices is None:
            return []
        values = self.choices() if callable(self.choices) else self.choices
        return list(values)


@dataclass(frozen=True, kw_only=True)
class OutputSpec:
    """One declared output: its type string and display name."""

    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


ExecuteFn = Callable[..., "tuple[Any, ...] | NodeResult"]


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """A node type: schema plus a pure execute function.

    Attributes:
        name: the class_type used in workflows ("KSampler").
        execute: ``execute(ctx, **inputs) -> tuple | NodeResult``; one value per declared output.
        inputs, outputs: the declared schema.
        category, display_name, description: editor metadata.
        output_node: an output of the workflow (SaveImage, PreviewImage...); only what output nodes
            need is executed.
        check_lazy_status: ``f(**available_inputs) -> list[str]`` naming the lazy inputs still needed
            given the others (unevaluated lazy inputs are passed as None); called until it returns [].
        fingerprint: ``f(**literal_inputs) -> hashable`` mixed into the cache key, for nodes whose
            result depends on outside state (a file's mtime); return a new value to force re-execution.
        validate_inputs: ``f(**literal_inputs) -> True | str``; a string is reported as a validation error.
    """

    name: str
    execute: ExecuteFn
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    category: str = ""
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    check_lazy_status: Callable[..., Sequence[str]] | None = None
    fingerprint: Callable[..., Any] | None = None
    validate_inputs: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("NodeSpec.name must be a non-empty class_type string")
        if not callable(self.execute):
            raise ValueError(f"NodeSpec {self.name!r}: execute must be callable, got {type(self.execute)}")
        names = [i.name for i in self.inputs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"NodeSpec {self.name!r} declares inputs {sorted(dupes)} more than once")
        if "ctx" in names:
            raise ValueError(f"NodeSpec {self.name!r}: 'ctx' is reserved for the execution context")
        if any(i.lazy for i in self.inputs) and self.check_lazy_status is None:
            raise ValueError(f"NodeSpec {self.name!r} has lazy inputs but no check_lazy_status")

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def visible_inputs(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if not i.hidden)


def types_compatible(output_type: str, input_type: str) -> bool:
    """Whether a link from an output of ``output_type`` may feed an input of ``input_type``."""
    if output_type == "*" or input_type == "*" or output_type == input_type:
        return True
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)


def input_spec(name: str, type_: str, **kw: Any) -> InputSpec:
    """``InputSpec(name=name, type=type_, **kw)``: the short form node modules declare inputs with
    (``I = input_spec``)."""
    return InputSpec(name=name, type=type_, **kw)
