"""File integrity: uploads never follow links out of input/, never lose a file to a concurrent upload of the
same name, leave nothing behind when the disk is full; SaveImage prefixes are literal (no glob)."""

from __future__ import annotations

import errno
import os
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from asgi_client import AsgiClient
from graph_toy_nodes import PNG_1X1, make_registry

from latentworks.server import create_app
from latentworks.server import files as server_files


@pytest.fixture
def client(tmp_path):
    registry, _ = make_registry()
    c = AsgiClient(create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path))
    c.data = tmp_path / "data"
    yield c
    c.close()


def upload(c, name, data=PNG_1X1, **form):
    return c.post("/upload/image", files={"image": (name, data, "image/png")}, data=form)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_replaces_a_symlink_not_its_target(client):
    outside = client.data / "outside.txt"
    outside.write_text("keep me")
    (client.data / "input" / "victim.png").symlink_to(outside)
    r = upload(client, "victim.png", overwrite="true")
    assert r.status_code == 200 and r.json()["name"] == "victim.png"
    assert outside.read_text() == "keep me"
    victim = client.data / "input" / "victim.png"
    assert not victim.is_symlink() and victim.read_bytes() == PNG_1X1


def test_dangling_symlink_is_not_followed_without_overwrite(client):
    target = client.data / "created-outside.png"
    (client.data / "input" / "new.png").symlink_to(target)
    r = upload(client, "new.png")
    assert r.status_code == 200 and r.json()["name"] == "new (1).png"
    assert not target.exists()


def test_symlinked_subfolder_is_refused(client):
    outside = client.data / "outside_dir"
    outside.mkdir()
    (client.data / "input" / "sub").symlink_to(outside, target_is_directory=True)
    r = upload(client, "a.png", subfolder="sub/deeper")
    assert r.status_code == 400 and "symbolic link" in r.json()["error"]["message"]
    assert listing(outside) == []


@pytest.mark.parametrize("subfolder", ["a" * 101, "a/" * 17, "b/" * 3000])
def test_overlong_subfolders_are_a_400_and_create_nothing(client, subfolder):
    r = upload(client, "x.png", subfolder=subfolder)
    assert r.status_code == 400 and "subfolder" in r.json()["error"]["message"]
    assert listing(client.data / "input") == []


def test_concurrent_uploads_of_one_name_all_survive(tmp_path, live_server):
    registry, _ = make_registry()
    srv = live_server(create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path))
    bodies = [PNG_1X1 + f"#{i}".encode() for i in range(40)]

    def send(body):
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            return http.post("/upload/image", files={"image": ("same.png", body, "image/png")})

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(send, bodies))
    assert [r.status_code for r in responses] == [200] * 40
    names = [r.json()["name"] for r in responses]
    assert len(set(names)) == 40
    folder = tmp_path / "data" / "input"
    assert {(folder / n).read_bytes() for n in names} == set(bodies)  # each upload landed in its own file
    assert len(listing(folder)) == 40  # and no temporary files are left


@pytest.mark.parametrize("overwrite", [False, True])
def test_disk_full_gives_507_and_leaves_no_partial_file(client, monkeypatch, overwrite):
    upload(client, "full.png")  # an earlier, complete upload of the same name
    before = listing(client.data / "input")

    def half_then_enospc(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(server_files, "_write_all", half_then_enospc)
    r = upload(client, "full.png", data=PNG_1X1 + b"new" * 100, overwrite=str(overwrite).lower())
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["type"] == "insufficient_storage" and "disk is full" in err["message"]
    assert listing(client.data / "input") == before  # no truncated file, no temporary file
    assert (client.data / "input" / "full.png").read_bytes() == PNG_1X1  # the earlier file is intact
    monkeypatch.undo()
    assert upload(client, "full.png").status_code == 200  # the server is fine afterwards


def test_other_write_errors_are_a_clean_500_with_a_message(client, monkeypatch):
    def eio(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(server_files, "_write_all", eio)
    r = upload(client, "x.png")
    assert r.status_code == 500 and r.json()["error"]["message"].endswith("Input/output error")
    assert listing(client.data / "input") == []


def test_save_image_prefix_is_literal_and_never_overwrites(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from latentworks.nodes import image as image_module
    from latentworks.nodes.image import image_nodes

    save = next(s for s in image_nodes(None) if s.name == "SaveImage").execute
    ctx = types.SimpleNamespace(output_dir=tmp_path, temp_dir=tmp_path / "temp")
    shades = {}
    for i, prefix in enumerate(["g", "[g]", "[g]", "*", "g?", "[g]"]):
        image = torch.full((1, 2, 2, 3), i / 10)
        name = save(ctx, images=image, filename_prefix=prefix).ui["images"][0]["filename"]
        shades[name] = round(i / 10 * 255)
    assert sorted(shades) == sorted(
        [
            "g_00001_.png",
            "[g]_00001_.png",
            "[g]_00002_.png",
            "*_00001_.png",
            "g?_00001_.png",
            "[g]_00003_.png",
        ]
    )
    for name, shade in shades.items():  # each file still holds the image saved under its name
        with Image.open(tmp_path / name) as im:
            assert im.getpixel((0, 0))[0] == shade, name
    # a file (here a dangling link) that appears between the folder scan and the write is not overwritten:
    # the scan is made to miss it, so only the exclusive create protects it
    (tmp_path / "h_00001_.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_module.os, "listdir", lambda folder: [])
        name = save(ctx, images=torch.zeros(1, 2, 2, 3), filename_prefix="h").ui["images"][0]["filename"]
    assert name == "h_00002_.png" and not (tmp_path / "elsewhere.png").exists()
