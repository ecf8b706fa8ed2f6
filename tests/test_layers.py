"""Layer ranks: a module never imports a module of a higher layer, nor a sibling layer of equal rank.

The rank list is in docs/design.md ("Layers"). Every ``import`` and ``from ... import`` in every .py file
under src/latentworks counts: module level, function-local, ``from __future__``, and imports guarded by
``typing.TYPE_CHECKING`` too (a type-only import still couples the layers), and ``importlib.import_module``
calls with a literal (or literal-prefixed f-string) module name. Relative imports are resolved
against the importing module. A module that no rank covers is itself a failure, so a new package has to be
placed in the list below before its first commit.

The checker reads source with ``ast`` and imports nothing, so it is fast and works without torch.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "latentworks"

# Rank of each part of latentworks. A module may import its own top-level part, or a part of strictly
# lower rank. Parts of equal rank may not import each other (training <-> evaluation, checkpoints <-> data),
# except the parts of one ENTRY_POINT layer (below).
RANKS: dict[str, int] = {
    "latentworks._version": 0,  # __version__ alone, so the server and `info` can read it
    "latentworks.atomic": 0,  # atomic file writes (stdlib only), used by checkpoints, data and training
    "latentworks.graph": 0,
    "latentworks.nn": 0,
    "latentworks.diffusion": 1,
    "latentworks.models": 2,
    "latentworks.checkpoints": 3,
    "latentworks.data": 3,
    "latentworks.families": 4,
    "latentworks.pipelines": 5,
    "latentworks.training": 6,
    "latentworks.evaluation": 6,
    "latentworks.nodes": 7,
    "latentworks.server": 8,
    "latentworks.commands": 9,
    "latentworks.cli": 9,
    "latentworks.__main__": 9,
    "latentworks": 9,  # the top-level package __init__ only; submodules are matched by the longer keys
}

# The command line is one layer split over several modules: cli.py dispatches to commands/*, and every
# command raises cli.UserError for bad input. These parts may import each other.
ENTRY_POINT: frozenset[str] = frozenset(
    {"latentworks.commands", "latentworks.cli", "latentworks.__main__", "latentworks"}
)

# Exceptions to the ranks, as (importing module, imported part): none. The checker keeps the parameter so its
# self-test can show that an allowance works.
_LEAD_FIXING: frozenset[tuple[str, str]] = frozenset()


def part_of(module: str) -> str | None:
    """The RANKS key that owns ``module`` (longest dotted prefix), or None for an unplaced module.

    ``latentworks`` itself matches only the top-level package, never ``latentworks.something_new``.
    """
    if module == PACKAGE:
        return PACKAGE
    best = None
    for key in RANKS:
        if key != PACKAGE and (module == key or module.startswith(key + ".")):
            if best is None or len(key) > len(best):
                best = key
    return best


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def module_name(path: Path, src: Path = SRC) -> str:
    """Dotted module name of a file under ``src`` (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_module_target(call: ast.Call) -> str | None:
    """The module an ``importlib.import_module("latentworks....")`` / ``__import__`` call names, if literal.

    For an f-string only the literal prefix counts (``f"latentworks.commands.{name}"`` -> the commands part).
    """
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        text = arg.value
    elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        text = str(arg.values[0].value).rstrip(".")
    else:
        return None
    return text if text.split(".")[0] == PACKAGE else None


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every (line, absolute module) the source imports, anywhere in it, relative imports resolved.

    ``from a.b import c`` yields ``a.b``: c is a name or submodule inside ``a.b``, of the same part.
    """
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (dynamic := _import_module_target(node)) is not None:
            found.append((node.lineno, dynamic))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}:{node.lineno}: relative import climbs above the package root")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target != PACKAGE:
                found.append((node.lineno, target))
                continue
            # from latentworks import x: x is a part (nodes, cli) or a name of the top-level package
            for alias in node.names:
                sub = f"{PACKAGE}.{alias.name}"
                found.append((node.lineno, sub if part_of(sub) is not None else PACKAGE))
    return found


def check_source(
    source: str,
    module: str,
    path: str,
    *,
    is_package: bool = False,
    allow: frozenset[tuple[str, str]] = frozenset(),
    used_allowances: set[tuple[str, str]] | None = None,
) -> list[Violation]:
    """Layer violations in one module's source (imports of modules outside latentworks are ignored)."""
    importer_part = part_of(module)
    if importer_part is None:
        return [Violation(path, 1, module, "", f"module {module} has no layer rank (add it to RANKS)")]
    rank = RANKS[importer_part]
    violations = []
    for line, target in imported_modules(ast.parse(source, filename=path), module, is_package):
        if target.split(".")[0] != PACKAGE:
            continue
        target_part = part_of(target)
        if target_part is None:
            violations.append(
                Violation(path, line, module, target, f"imports {target}, which has no layer rank")
            )
            continue
        if target_part == importer_part or RANKS[target_part] < rank:
            continue
        if target_part in ENTRY_POINT and importer_part in ENTRY_POINT:
            continue
        if (module, target_part) in allow:
            if used_allowances is not None:
                used_allowances.add((module, target_part))
            continue
        violations.append(
            Violation(
                path,
                line,
                module,
                target,
                f"imports {target} (rank {rank} {importer_part} -> rank {RANKS[target_part]} {target_part})",
            )
        )
    return violations


@functools.cache
def check_tree(src: Path = SRC) -> tuple[list[Violation], set[tuple[str, str]]]:
    violations: list[Violation] = []
    used: set[tuple[str, str]] = set()
    for path in sorted((src / PACKAGE).rglob("*.py")):
        module = module_name(path, src)
        shown = str(path.relative_to(src.parent))
        violations += check_source(
            path.read_text(encoding="utf-8"),
            module,
            shown,
            is_package=path.name == "__init__.py",
            allow=_LEAD_FIXING,
            used_allowances=used,
        )
    return violations, used


def test_no_upward_or_lateral_imports() -> None:
    violations, _ = check_tree()
    assert not violations, "layer violations (see docs/design.md, Layers):\n" + "\n".join(
        map(str, violations)
    )


def test_every_rank_key_exists() -> None:
    missing = []
    for key in RANKS:
        rel = Path(*key.split("."))
        if not ((SRC / rel).is_dir() or (SRC / rel).with_suffix(".py").is_file()):
            missing.append(key)
    # families is being created in parallel by the lead; __main__ is optional.
    optional = {"latentworks.families", "latentworks.__main__"}
    assert set(missing) <= optional, f"RANKS names parts that do not exist: {missing}"


# Modules directly under models/ that every network file may use; any other sibling is another family.
_MODELS_SHARED = frozenset({"latentworks.models", "latentworks.models.configs"})
# Adapters that are part of the family they adapt: a ControlNet is a trainable copy of the U-Net's encoder
# half, built from the U-Net's own blocks (Zhang et al. 2023), so it imports them.
# The same holds for the FLUX ControlNet, a shortened copy of the FLUX transformer built from its blocks.
_ADAPTER_OF = {
    "latentworks.models.controlnet": "latentworks.models.unet",
    "latentworks.models.controlnet_flux": "latentworks.models.flux",
    # The emoji super-resolution stage is the U-Net itself with the upsampled image concatenated to its input
    # and the augmentation level as its class input (Imagen/IF style), so it is part of the U-Net family.
    "latentworks.models.superres": "latentworks.models.unet",
    # Our own unCLIP decoder is the text-to-image U-Net with SD 2.1 unCLIP's class-embedding path switched on.
    "latentworks.models.own_unclip": "latentworks.models.unet",
}


def family_cross_imports(source: str, module: str, path: str) -> list[Violation]:
    """Imports of one model-family file (``models/<family>.py``) from another family file.

    Blocks two families share (attention, RoPE, patchify, adaLN, final layers) belong in ``nn/``.
    """
    found = []
    for line, target in imported_modules(ast.parse(source, filename=path), module, is_package=False):
        if not target.startswith("latentworks.models.") and target != "latentworks.models":
            continue
        family = ".".join(target.split(".")[:3])
        if family != module and family not in _MODELS_SHARED and _ADAPTER_OF.get(module) != family:
            found.append(
                Violation(path, line, module, target, f"imports {target}: one family file imports another")
            )
    return found


def test_no_family_file_imports_another_family() -> None:
    violations = []
    for path in sorted((SRC / PACKAGE / "models").glob("*.py")):
        if path.name == "__init__.py":
            continue
        shown = str(path.relative_to(SRC.parent))
        violations += family_cross_imports(path.read_text(encoding="utf-8"), module_name(path), shown)
    assert not violations, "move shared blocks to nn/:\n" + "\n".join(map(str, violations))


# --- self-tests: the checker itself must be able to fail -------------------------------------------------


def test_checker_reports_upward_import_including_function_local() -> None:
    source = (
        "from __future__ import annotations\n"
        "import torch\n"
        "from latentworks.nn.attention import attention\n"
        "def f():\n"
        "    from latentworks.pipelines.text_to_image import Pipeline\n"
        "    return Pipeline\n"
    )
    violations = check_source(source, "latentworks.data.latents", "data/latents.py")
    assert [(v.line, v.imported) for v in violations] == [(5, "latentworks.pipelines.text_to_image")]
    assert "rank 3 latentworks.data -> rank 5 latentworks.pipelines" in str(violations[0])
    assert str(violations[0]).startswith("data/latents.py:5: imports latentworks.pipelines")


def test_checker_reports_lateral_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from latentworks.evaluation.fid import InceptionFeatures\n"
    )
    violations = check_source(source, "latentworks.training.losses", "training/losses.py")
    assert [v.line for v in violations] == [3]
    assert "rank 6 latentworks.training -> rank 6 latentworks.evaluation" in str(violations[0])


def test_checker_sees_import_module_calls() -> None:
    source = (
        "import importlib\n"
        "def load(name):\n"
        "    importlib.import_module('latentworks.server.app')\n"
        "    return importlib.import_module(f'latentworks.nodes.{name}')\n"
    )
    violations = check_source(source, "latentworks.pipelines.x", "x.py")
    assert [(v.line, v.imported) for v in violations] == [
        (3, "latentworks.server.app"),
        (4, "latentworks.nodes"),
    ]


def test_checker_resolves_relative_imports() -> None:
    # from .. import pipelines, inside latentworks/data/latents.py, is latentworks.pipelines
    violations = check_source("from ..pipelines import sampling\n", "latentworks.data.latents", "x.py")
    assert [v.imported for v in violations] == ["latentworks.pipelines"]
    # from . import x inside a package __init__ stays in the package
    assert check_source("from . import io\n", "latentworks.checkpoints", "x.py", is_package=True) == []
    # from .attention import x inside nn/ is fine; from ..models inside nn/ is not
    assert check_source("from .attention import sdpa\n", "latentworks.nn.rope", "x.py") == []
    assert len(check_source("from ..models import dit\n", "latentworks.nn.rope", "x.py")) == 1


def test_checker_reports_unplaced_modules() -> None:
    assert "has no layer rank" in str(check_source("x = 1\n", "latentworks.newthing.mod", "x.py")[0])
    violations = check_source("import latentworks.newthing\n", "latentworks.server.app", "x.py")
    assert "latentworks.newthing, which has no layer rank" in str(violations[0])
    # "latentworks" matches only the top-level package, not an unknown top-level module
    assert part_of("latentworks.newthing") is None
    assert part_of("latentworks") == "latentworks"


def test_checker_allows_same_part_and_lower_parts() -> None:
    source = "import latentworks.models.dit\nfrom latentworks.diffusion import samplers\nimport torch\n"
    assert check_source(source, "latentworks.models.flux", "x.py") == []
    assert check_source("import latentworks.nodes\n", "latentworks", "x.py", is_package=True) == []
    # the entry-point layer is one layer: commands may raise cli.UserError
    assert check_source("from latentworks.cli import UserError\n", "latentworks.commands.info", "x.py") == []
    # but the top-level package is rank 9, so nothing below may import it (read latentworks._version)
    assert len(check_source("import latentworks\n", "latentworks.server.app", "x.py")) == 1
    assert len(check_source("from latentworks import __version__\n", "latentworks.nodes.x", "x.py")) == 1


def test_allowlist_silences_only_its_entries() -> None:
    allow = frozenset({("latentworks.models.text.clip", "latentworks.checkpoints")})
    used: set[tuple[str, str]] = set()
    source = "from latentworks.checkpoints.io import load_state_dict\nimport latentworks.pipelines\n"
    violations = check_source(
        source, "latentworks.models.text.clip", "x.py", allow=allow, used_allowances=used
    )
    assert [v.imported for v in violations] == ["latentworks.pipelines"]
    assert used == set(allow)


@pytest.mark.parametrize(
    ("module", "part"),
    [
        ("latentworks.models.text.clip", "latentworks.models"),
        ("latentworks.cli", "latentworks.cli"),
        ("latentworks.commands.generate", "latentworks.commands"),
        ("latentworks.graphics", None),
    ],
)
def test_part_of(module: str, part: str | None) -> None:
    assert part_of(module) == part


def test_family_cross_import_check_reports_a_family_importing_another() -> None:
    source = (
        "from latentworks.models.mmdit import StreamAttention\n"
        "from latentworks.models.configs import config_to_dict\n"
        "from latentworks.nn.attention import attention\n"
        "def f():\n"
        "    from .dit import DiT\n"
    )
    found = family_cross_imports(source, "latentworks.models.flux", "models/flux.py")
    assert [(v.line, v.imported) for v in found] == [
        (1, "latentworks.models.mmdit"),
        (5, "latentworks.models.dit"),
    ]
