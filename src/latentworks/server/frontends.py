"""Which browser front end ``latentworks serve`` serves at ``/``: the built-in editor, ComfyUI's official
frontend (the optional ``comfyui-frontend-package``), or any folder holding an ``index.html``."""

from __future__ import annotations

from pathlib import Path

BUILTIN = "builtin"
COMFYUI = "comfyui"
COMFYUI_PIP = "pip install 'latentworks[comfyui-frontend]'"


def comfyui_frontend_dir() -> Path:
    """The static folder of the installed ``comfyui-frontend-package``; raises ValueError (saying what to
    install) when it is absent."""
    try:
        import comfyui_frontend_package  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            "--frontend comfyui needs ComfyUI's official frontend, which is not installed. Install it with "
            f"`{COMFYUI_PIP}` (or `pip install comfyui-frontend-package`). It is GPL-3.0 licensed and "
            "about 120 MB, so latentworks does not bundle it; the built-in editor needs nothing extra."
        ) from None
    static = Path(comfyui_frontend_package.__file__).parent / "static"
    if not (static / "index.html").is_file():
        raise ValueError(
            f"the installed comfyui-frontend-package has no static/index.html (looked in {static}); "
            f"reinstall it with `{COMFYUI_PIP}`"
        )
    return static


def frontend_dir(choice: str, builtin: Path) -> Path:
    """The folder to serve for ``--frontend choice``: "builtin" -> ``builtin``, "comfyui" -> the official
    frontend's folder, anything else -> that folder (it must hold an index.html). Raises ValueError."""
    if choice == BUILTIN:
        return builtin
    if choice == COMFYUI:
        return comfyui_frontend_dir()
    path = Path(choice).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"--frontend {choice!r}: no such folder. Use 'builtin' (the default), 'comfyui', or the path "
            "of a folder holding a built front end (index.html and its assets)"
        )
    if not (path / "index.html").is_file():
        raise ValueError(
            f"--frontend {choice!r}: the folder has no index.html; point it at a built front end"
        )
    return path
