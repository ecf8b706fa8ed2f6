"""`latentworks serve` budget flags: parsed, shown with defaults, 0 switches a limit off."""

from __future__ import annotations

import argparse

import pytest

from latentworks.cli import build_parser
from latentworks.commands.serve import budgets_from_args, byte_size
from latentworks.graph import JobBudgets


def test_budget_flags_have_defaults_and_zero_means_no_limit(capsys) -> None:
    args = build_parser().parse_args(["serve"])
    assert budgets_from_args(args) == JobBudgets()
    assert args.cache_bytes == 8 * 2**30
    args = build_parser().parse_args(
        ["serve", "--max-image-pixels", "0", "--max-batch-pixels", "1000", "--max-job-seconds", "2.5",
         "--max-latent-elements", "0", "--cache-bytes", "512M"]
    )  # fmt: skip
    assert budgets_from_args(args) == JobBudgets(
        max_image_pixels=None, max_batch_pixels=1000, max_latent_elements=None, max_job_seconds=2.5
    )
    assert args.cache_bytes == 512 * 2**20
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-image-pixels", "-5"])
    assert "0 (no limit) or positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    for flag, default in (
        ("--max-image-pixels", "16777216"),
        ("--max-job-seconds", "1800"),
        ("--cache-bytes", "8589934592"),
    ):
        assert flag in help_text and default in help_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8G", 8 * 2**30), ("1.5g", 3 * 2**29), ("100", 100), ("2KiB", 2048), ("3 MB", 3 * 2**20)],
)
def test_byte_sizes(text: str, expected: int) -> None:
    assert byte_size(text) == expected


def test_bad_byte_size_says_what_to_write() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="8G, 512M"):
        byte_size("lots")
