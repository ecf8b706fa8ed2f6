"""Resume: bit-exact after kill -9, caption embeddings independent of batching, and the saved config wins
(only explicitly given, changeable options override it)."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import BatchSensitiveEncoder, HashTextEncoder, make_latent_cache, make_square_images  # noqa: E402
from test_diffusion_training import DIT, UNET, _cfg  # noqa: E402

from latentworks.checkpoints.io import load_state_dict, read_metadata  # noqa: E402
from latentworks.cli import main  # noqa: E402
from latentworks.training.diffusion import _CaptionCache, train_diffusion  # noqa: E402
from latentworks.training.resume import ResumeError  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture
def cache(tmp_path):
    return make_latent_cache(tmp_path / "lat.safetensors", n=8)


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ, e.g. {differ[:3]}"


# ---- the caption memo --------------------------------------------------------------------------------


def test_caption_embedding_does_not_depend_on_batch_or_order_of_first_use():
    enc = BatchSensitiveEncoder()
    first = _CaptionCache(enc, torch.device("cpu"))
    first(["red apple", "blue car"])
    a = first(["green tree", "red apple"])
    other = _CaptionCache(enc, torch.device("cpu"))
    other(["green tree"])
    b = other(["green tree", "red apple"])
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    # ... and each equals the caption encoded on its own
    assert torch.equal(a.tokens[1:], enc.encode(["red apple"]).tokens)


def test_resume_exact_with_batch_dependent_encoder_and_dropout(tmp_path, cache):
    """The two causes of a drifting resume: memo contents depending on history, and dropout drawing from
    the global generator (a resumed process starts it elsewhere)."""
    enc = BatchSensitiveEncoder()
    kw = dict(architecture="unet", model=dataclasses.replace(UNET, dropout=0.3), checkpoint_every=1)
    train_diffusion(_cfg(tmp_path, "a", steps=2, **kw), text_encoder=enc)
    train_diffusion(_cfg(tmp_path, "b", steps=1, **kw), text_encoder=enc)
    torch.manual_seed(12345)  # a fresh process would not share the first run's generator state
    train_diffusion(_cfg(tmp_path, "b", steps=2, resume=True, **kw), text_encoder=enc)
    _assert_same_state(
        tmp_path / "a/checkpoints/last.safetensors", tmp_path / "b/checkpoints/last.safetensors"
    )


# ---- kill -9 -----------------------------------------------------------------------------------------

KILL_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {here!r})
torch.set_num_threads({threads})
from helpers import BatchSensitiveEncoder
from test_diffusion_training import DIT, _cfg
from pathlib import Path
import latentworks.training.ema as E
from latentworks.training.diffusion import train_diffusion
_update = E.EMA.update
def slow_update(self, model):  # slow the steps down (values unchanged) so the kill lands mid-run
    time.sleep(0.1)
    _update(self, model)
E.EMA.update = slow_update
train_diffusion(_cfg(Path({tmp!r}), "killed", **{kw!r}), text_encoder=BatchSensitiveEncoder())
"""


def test_kill_9_at_a_random_step_then_resume_is_bitwise_equal(tmp_path, cache):
    steps, every = 11, 3
    kw = dict(steps=steps, checkpoint_every=every, architecture="dit")
    target = random.Random().randint(every + 1, steps - 4)  # a step after the first checkpoint
    script = tmp_path / "kill.py"
    script.write_text(
        KILL_SCRIPT.format(here=str(HERE), threads=torch.get_num_threads(), tmp=str(tmp_path), kw=kw)
    )
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err_out:
        proc = subprocess.Popen([sys.executable, str(script)], stderr=err_out)
    log, ckpt = tmp_path / "killed/log.jsonl", tmp_path / "killed/checkpoints/last.safetensors"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(log.read_text().splitlines()) if log.is_file() else 0  # log_every=1: one line a step
        if done >= target and ckpt.is_file():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    err = err_file.read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"target step {target}: the run was not killed mid-way:\n{err}"
    at = int(read_metadata(ckpt)["step"])
    assert every <= at < steps, (target, at)

    enc = BatchSensitiveEncoder()
    train_diffusion(_cfg(tmp_path, "straight", **kw), text_encoder=enc)
    r = train_diffusion(_cfg(tmp_path, "killed", resume=True, **kw), text_encoder=enc)
    assert r.step == steps and len(r.losses) == steps - at, (target, at)
    _assert_same_state(tmp_path / "straight/model.safetensors", tmp_path / "killed/model.safetensors")
    _assert_same_state(ckpt, tmp_path / "straight/checkpoints/last.safetensors")
    steps_logged = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


# ---- the saved config wins ---------------------------------------------------------------------------


def test_resume_refuses_fixed_options_and_keeps_the_config(tmp_path, cache):
    enc = HashTextEncoder()
    train_diffusion(_cfg(tmp_path, steps=3), text_encoder=enc)
    config = (tmp_path / "run/config.json").read_bytes()
    ckpt = (tmp_path / "run/checkpoints/last.safetensors").read_bytes()
    with pytest.raises(ResumeError) as e:
        train_diffusion(
            _cfg(tmp_path, steps=6, resume=True, prediction="eps", batch_size=2), text_encoder=enc
        )
    msg = str(e.value)
    assert "--prediction (saved 'flow', given 'eps')" in msg and "--batch-size (saved 4, given 2)" in msg
    assert "--steps" in msg.split("may change on resume:")[1]  # says what may change
    with pytest.raises(ResumeError, match="depth: saved 2, given 1"):
        train_diffusion(
            _cfg(tmp_path, steps=6, resume=True, model=dataclasses.replace(DIT, depth=1)), text_encoder=enc
        )
    assert (tmp_path / "run/config.json").read_bytes() == config
    assert (tmp_path / "run/checkpoints/last.safetensors").read_bytes() == ckpt


def test_resume_with_a_new_learning_rate_applies_it(tmp_path, cache, capsys):
    enc = HashTextEncoder()
    train_diffusion(_cfg(tmp_path, steps=3), text_encoder=enc)
    train_diffusion(_cfg(tmp_path, steps=4, resume=True, lr=5e-4), text_encoder=enc)
    assert "--lr: 0.001 -> 0.0005" in capsys.readouterr().out
    meta = read_metadata(tmp_path / "run/checkpoints/last.safetensors")
    assert json.loads(meta["optim_model.param_groups"])[0]["lr"] == 5e-4
    assert json.loads((tmp_path / "run/config.json").read_text())["train"]["lr"] == 5e-4


def test_shape_mismatch_without_a_saved_config_is_a_clear_error(tmp_path, cache):
    enc = HashTextEncoder()
    train_diffusion(_cfg(tmp_path, steps=3), text_encoder=enc)
    (tmp_path / "run/config.json").unlink()  # nothing to compare with: the checkpoint itself must refuse
    wide = dataclasses.replace(DIT, width=48, num_heads=3)
    with pytest.raises(
        ValueError, match=r"do not fit the configured model: size mismatch for .*config.json"
    ) as e:
        train_diffusion(_cfg(tmp_path, steps=6, resume=True, model=wide), text_encoder=enc)
    assert len(str(e.value).splitlines()) == 1


@pytest.fixture
def cli_encoder(monkeypatch):
    """The CLI's train_diffusion with the hash text encoder (no MiniLM weights in tests)."""
    import latentworks.training.diffusion as D

    real = D.train_diffusion
    monkeypatch.setattr(D, "train_diffusion", lambda cfg: real(cfg, text_encoder=HashTextEncoder()))


def test_cli_train_resume_uses_the_saved_config(tmp_path, cache, cli_encoder, capsys):
    # A run started with settings far from the CLI defaults (a tiny DiT, lr 1e-3, batch 4, 1 log step).
    train_diffusion(_cfg(tmp_path, steps=3, checkpoint_every=3), text_encoder=HashTextEncoder())
    saved = json.loads((tmp_path / "run/config.json").read_text())
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--resume", "--family", "unet", "--seed", "3", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "--architecture (saved 'dit', given 'unet')" in err and "--seed (saved 0, given 3)" in err
    assert "Traceback" not in err and "--lr" not in err.split("may change")[0]
    assert main(["train", "--out", run, "--resume", "--steps", "5", "--lr", "2e-3"]) == 0
    assert "--steps: 3 -> 5; --lr: 0.001 -> 0.002" in capsys.readouterr().out
    now = json.loads((tmp_path / "run/config.json").read_text())
    assert now["model"] == saved["model"] and now["architecture"] == saved["architecture"]
    changed = {k for k in saved["train"] if now["train"][k] != saved["train"][k]}
    assert changed == {"steps", "lr", "resume", "progress"}, changed
    assert read_metadata(tmp_path / "run/checkpoints/last.safetensors")["step"] == "5"


def test_cli_resume_of_a_run_saved_before_new_model_fields(tmp_path, cache, cli_encoder, capsys):
    """A run whose config.json predates fields added to the model config since (UNetConfig's
    ``num_classes`` and ``only_cross_attention``) resumes with their defaults, while a field that really
    differs is still refused."""
    train_diffusion(_cfg(tmp_path, steps=3, architecture="unet", model=UNET), text_encoder=HashTextEncoder())
    path = tmp_path / "run/config.json"
    old = json.loads(path.read_text())
    for added in ("num_classes", "only_cross_attention"):
        del old["model"][added]
    path.write_text(json.dumps(old))
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--resume", "--steps", "4"]) == 0, capsys.readouterr().err
    assert read_metadata(tmp_path / "run/checkpoints/last.safetensors")["step"] == "4"
    with pytest.raises(ResumeError, match="head_dim: saved 16, given 8"):
        train_diffusion(
            _cfg(
                tmp_path,
                steps=6,
                resume=True,
                architecture="unet",
                model=dataclasses.replace(UNET, head_dim=8),
            ),
            text_encoder=HashTextEncoder(),
        )


def test_cli_train_vae_resume_keeps_the_saved_settings(tmp_path, capsys):
    from test_vae_training import _cfg as vae_cfg

    from latentworks.training.vae import train_vae

    make_square_images(tmp_path / "sq.npz")
    train_vae(vae_cfg(tmp_path, steps=2, sample_every=2))
    saved = json.loads((tmp_path / "vae/config.json").read_text())
    run = str(tmp_path / "vae")
    # No --data, --preset, --resolution...: they come from the run (the defaults would be emoji-f4c4 at 64px
    # with the Inception loss, and used to replace the run's settings silently).
    assert main(["train-vae", "--out", run, "--resume", "--steps", "3"]) == 0
    now = json.loads((tmp_path / "vae/config.json").read_text())
    assert now["model"] == saved["model"]
    assert {k for k in saved["train"] if now["train"][k] != saved["train"][k]} == {
        "steps",
        "resume",
        "progress",
    }
    assert main(["train-vae", "--out", run, "--resume", "--preset", "emoji-f4c4", "--resolution", "16"]) == 2
    assert "--preset (saved 'tiny', given 'emoji-f4c4')" in capsys.readouterr().err
    assert main(["train", "--out", run, "--resume"]) == 2  # a VAE run is not a diffusion run
    assert "belongs to a 'autoencoder' run, not a 'diffusion' run" in capsys.readouterr().err
    assert json.loads((tmp_path / "vae/config.json").read_text()) == now


def test_help_still_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "default: 50000" in out and "default: 0.0001" in out and "default: flow" in out
    with pytest.raises(SystemExit):
        main(["train-vae", "--help"])
    out = capsys.readouterr().out
    assert "default: 20000" in out and "default: emoji-f4c4" in out


def test_grad_scaler_state_round_trips():
    from latentworks.training.checkpoint import grad_scaler_meta, load_grad_scaler

    a = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    a.scale(p.sum()).backward()
    p.grad = torch.tensor([float("inf"), 1.0])  # an overflow: the scale backs off
    a.step(opt)
    a.update()
    b = torch.amp.GradScaler("cpu")
    load_grad_scaler(b, {"grad_scaler": grad_scaler_meta(a)})
    assert b.get_scale() == 2.0**9 and b.state_dict() == a.state_dict()
