"""`latentworks serve --frontend builtin|comfyui|PATH`: which folder is served at /, and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from latentworks.cli import build_parser
from latentworks.server import create_app
from latentworks.server.app import STATIC_DIR
from latentworks.server.frontends import comfyui_frontend_dir, frontend_dir


def test_builtin_is_the_default():
    args = build_parser().parse_args(["serve"])
    assert args.frontend == "builtin"
    assert frontend_dir(args.frontend, STATIC_DIR) == STATIC_DIR


def test_comfyui_without_the_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfyui_frontend_package", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'latentworks\[comfyui-frontend\]'"):
        frontend_dir("comfyui", STATIC_DIR)


def test_comfyui_is_the_installed_package_folder():
    package = pytest.importorskip("comfyui_frontend_package")
    assert comfyui_frontend_dir() == Path(package.__file__).parent / "static"
    assert (frontend_dir("comfyui", STATIC_DIR) / "index.html").is_file()


def test_a_folder_needs_an_index_html(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        frontend_dir(str(tmp_path / "missing"), STATIC_DIR)
    with pytest.raises(ValueError, match="no index.html"):
        frontend_dir(str(tmp_path), STATIC_DIR)
    (tmp_path / "index.html").write_text("<!doctype html><title>mine</title>")
    assert frontend_dir(str(tmp_path), STATIC_DIR) == tmp_path


def test_a_custom_folder_is_served_at_root_beside_the_api(tmp_path):
    from graph_toy_nodes import make_registry

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>mine</title>")
    app = create_app(make_registry()[0], data_dir=tmp_path / "d", models_dir=tmp_path / "m", static_dir=site)
    transport = httpx.ASGITransport(app=app)

    async def fetch() -> tuple[str, list]:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8188") as c:
            return (await c.get("/")).text, (await c.get("/api/extensions")).json()

    import asyncio

    page, extensions = asyncio.run(fetch())
    assert "<title>mine</title>" in page and extensions == []
    app.state.latentworks.store.close()


def test_serve_refuses_a_missing_frontend_before_starting(tmp_path, monkeypatch, capsys):
    from latentworks.cli import main

    monkeypatch.setitem(sys.modules, "comfyui_frontend_package", None)
    code = main(["serve", "--frontend", "comfyui", "--data-dir", str(tmp_path / "d"), "--port", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "pip install 'latentworks[comfyui-frontend]'" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # refused before creating anything
