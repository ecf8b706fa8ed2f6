"""``--config FILE.toml`` for the training commands: the file's values sit between the defaults and the
command line, count as given for a resume, and bad files get a clear error."""

from __future__ import annotations

import pytest

from latentworks.cli import build_parser, main
from latentworks.commands.resume_options import ConfigFileError, given_options, option_values


def parse(*argv: str):  # noqa: ANN201
    return build_parser().parse_args(list(argv))


def test_config_values_between_defaults_and_flags(tmp_path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('lr = 3e-4\nbatch-size = 16\ncaption_augment = "off"\nsteps = 7\n', encoding="utf-8")
    o = option_values(parse("train", "--out", str(tmp_path / "r"), "--config", str(cfg)))
    assert (o["lr"], o["batch_size"], o["caption_augment"], o["steps"]) == (3e-4, 16, "off", 7)
    assert o["ema_decay"] == 0.999  # not in the file: the default
    o = option_values(parse("train", "--out", str(tmp_path / "r"), "--config", str(cfg), "--lr", "1e-5"))
    assert o["lr"] == 1e-5 and o["batch_size"] == 16  # the command line wins
    given = given_options(parse("train", "--out", str(tmp_path / "r"), "--config", str(cfg)))
    assert set(given) == {"lr", "batch_size", "caption_augment", "steps"}
    (tmp_path / "v.toml").write_text("seed = 5\nlr = 2e-4\n", encoding="utf-8")
    vae = option_values(parse("train-vae", "--data", "d", "--out", "o", "--config", str(tmp_path / "v.toml")))
    assert (vae["seed"], vae["lr"]) == (5, 2e-4)  # train-vae reads the same way


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr = 1e-4\nlearning_rate = 2\n", "unknown option 'learning_rate'; the options are: "),
        ('caption-augment = "maybe"\n', "choose from auto, on, off"),
        ('steps = "many"\n', "steps = 'many' is not valid"),
        ("lr = [1, 2]\n", "lr must be a single value"),
        ("lr = \n", "is not a readable TOML file"),
    ],
)
def test_bad_config_files(tmp_path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigFileError, match=message.replace("[", "\\[")):
        option_values(parse("train", "--out", str(tmp_path / "r"), "--config", str(cfg)))


def test_cli_reports_a_missing_config_without_traceback(tmp_path, capsys) -> None:
    code = main(["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "none.toml")])
    err = capsys.readouterr().err
    assert code != 0 and "none.toml does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written
