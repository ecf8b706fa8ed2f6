"""`latentworks serve --memory-budget`: the server runs every job through one MemoryManager with that budget,
and its output cache (bounded by bytes only) releases evicted networks from that manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import latentworks.server
from latentworks.cli import build_parser
from latentworks.commands.serve import run
from latentworks.nodes.payloads import VAEPayload
from latentworks.pipelines.memory import MemoryManager


def test_serve_makes_one_manager_with_the_budget_and_releases_evicted_networks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(latentworks.server, "serve", lambda registry, host, port, **kw: seen.update(kw))
    args = build_parser().parse_args(
        [
            "serve",
            "--memory-budget",
            "1.5GB",
            "--data-dir",
            str(tmp_path / "d"),
            "--models-dir",
            str(tmp_path),
        ]
    )
    assert run(args) == 0
    manager = seen["device"]
    assert isinstance(manager, MemoryManager) and manager.budget == 3 * 2**29
    assert seen.get("cache_size") is None  # bytes bound the cache, not a count
    net = nn.Sequential(nn.Linear(4, 4))
    with manager.use(net):
        pass
    assert manager.managed() == [net]
    seen["on_evict"]((VAEPayload(net, None),))  # what the cache calls when it drops the entry
    assert manager.managed() == [] and net[0].weight.device == torch.device("cpu")


def test_memory_budget_flag_is_optional_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["serve"]).memory_budget is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--memory-budget", "lots"])
    assert "not a size" in capsys.readouterr().err
