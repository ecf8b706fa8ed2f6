"""The T5 tokenizer of the DeepFloyd IF cascade: found in a tokenizer folder, a model folder or a tokenizer.json,
never a CLIP folder; without one, errors that say what to pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from latentworks.pipelines.cascade import load_t5_tokenizer
from support.if_fixtures import write_t5_tokenizer_folder
from support.tokenizers import write_clip_tokenizer

PROMPT = "a red apple on the table"


def _ids(tok) -> list[int]:  # noqa: ANN001
    return tok([PROMPT], padding="max_length", max_length=10, truncation=True).input_ids[0]


def test_the_tokenizer_is_found_in_every_usual_place(tmp_path: Path) -> None:
    folder = write_t5_tokenizer_folder(tmp_path / "IF-I" / "tokenizer")
    want = _ids(load_t5_tokenizer(folder))
    assert want[:7] == [4, 5, 6, 11, 10, 12, 1] and want[7:] == [0, 0, 0]  # words, </s>, <pad>...
    assert _ids(load_t5_tokenizer(tmp_path / "IF-I")) == want  # the model folder
    assert _ids(load_t5_tokenizer(folder / "tokenizer.json")) == want  # the file alone
    sd3 = tmp_path / "sd3"
    write_clip_tokenizer(sd3 / "tokenizer")
    (sd3 / "tokenizer" / "tokenizer.json").write_text("{}")  # a CLIP folder with a tokenizer.json is skipped
    shutil.copytree(folder, sd3 / "tokenizer_3")
    assert _ids(load_t5_tokenizer(sd3)) == want


def test_missing_or_unreadable_tokenizers_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Pass it with --tokenizer"):
        load_t5_tokenizer(None)
    with pytest.raises(FileNotFoundError, match=r"expected tokenizer.json or spiece.model.*--tokenizer"):
        load_t5_tokenizer(tmp_path)
    spm = tmp_path / "spm"
    spm.mkdir()
    (spm / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="sentencepiece"):
        load_t5_tokenizer(spm)
