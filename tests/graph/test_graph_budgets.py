"""Per-job budgets and the byte-bounded output cache of the torch-free engine."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from graph_toy_nodes import make_registry

from latentworks.graph import (
    BudgetExceeded,
    CacheEntry,
    Executor,
    InputSpec,
    JobBudgets,
    NodeRegistry,
    NodeSpec,
    OutputCache,
    OutputSpec,
    walk_nbytes,
)


def entry(n: int) -> CacheEntry:
    return CacheEntry(outputs=(b"x" * n,))


def test_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = OutputCache(100, max_bytes=1000)
    for key in "abc":
        cache.put(key, entry(300))
    assert cache.nbytes == 900 and len(cache) == 3
    assert cache.get("a") is not None  # a is now the most recently used; b the least
    cache.put("d", entry(300))  # 1200 > 1000: b goes
    assert "b" not in cache and all(k in cache for k in "acd") and cache.nbytes == 900
    cache.put("e", entry(700))  # 1600 bytes: c, then a go (d + e = 1000 fits exactly)
    assert [k for k in "acde" if k in cache] == ["d", "e"] and cache.nbytes == 1000
    cache.put("e", entry(10))  # replacing an entry releases its old bytes
    assert cache.nbytes == 310
    cache.put("huge", entry(1001))  # larger than the whole cache: not kept, nothing else evicted
    assert "huge" not in cache and "d" in cache and "e" in cache and cache.nbytes == 310
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0


def test_cache_entry_limit_still_applies_and_sizer_errors_do_not_fail() -> None:
    def broken(value: object) -> int:
        raise RuntimeError("cannot size")

    cache = OutputCache(2, max_bytes=10, sizer=broken)
    for key in "abc":
        cache.put(key, entry(1000))  # counted 0 bytes: only the entry count bounds them
    assert len(cache) == 2 and "a" not in cache and cache.nbytes == 0


def test_walk_counts_each_object_once_and_knows_duck_typed_sizes() -> None:
    @dataclass
    class Payload:
        weights: np.ndarray
        name: str

    class Custom:
        def cache_nbytes(self) -> int:
            return 12345

    shared = np.zeros((10, 10), np.float32)  # 400 bytes
    value = (Payload(shared, "m"), Payload(shared, "v"), {"x": np.zeros(3, np.float64)}, Custom(), b"abc")
    assert walk_nbytes(value) == 400 + 24 + 12345 + 3
    assert walk_nbytes(value, leaf=lambda o: 7 if isinstance(o, Custom) else None) == 400 + 24 + 7 + 3


def test_budget_messages_name_the_limit() -> None:
    b = JobBudgets(max_image_pixels=100, max_batch_pixels=250, max_latent_elements=1000)
    assert b.pixels_error(10, 10) is None and b.pixels_error(10, 10, 2) is None
    assert "--max-image-pixels" in (b.pixels_error(11, 10) or "")
    assert "--max-batch-pixels" in (b.pixels_error(10, 10, 3) or "")
    assert b.latent_error((1, 4, 10, 25)) is None
    assert "--max-latent-elements" in (b.latent_error((1, 4, 10, 26)) or "")
    assert JobBudgets.unlimited().pixels_error(10**6, 10**6, 64) is None
    with pytest.raises(ValueError, match="max_image_pixels"):
        JobBudgets(max_image_pixels=0)


def _make_image_registry(allocated: list) -> NodeRegistry:
    def make_image(ctx, width, height, batch):
        ctx.check_pixels(width, height, batch, inputs="width, height, batch")
        allocated.append((width, height, batch))
        return (f"{width}x{height}x{batch}",)

    return NodeRegistry(
        [
            NodeSpec(
                name="MakeImage",
                execute=make_image,
                output_node=True,
                inputs=tuple(
                    InputSpec(name=n, type="INT", default=1, min=1, max=10**6)
                    for n in ("width", "height", "batch")
                ),
                outputs=(OutputSpec(type="IMAGE"),),
            )
        ]
    )


def test_over_budget_node_fails_before_allocating_with_a_node_error(tmp_path) -> None:
    allocated: list = []
    executor = Executor(_make_image_registry(allocated), budgets=JobBudgets(max_image_pixels=64 * 64))
    prompt = {"7": {"class_type": "MakeImage", "inputs": {"width": 9000, "height": 9000, "batch": 1}}}
    result = executor.execute(prompt, executor.new_context("p", output_dir=tmp_path))
    assert result.status == "error" and allocated == []
    err = result.error
    assert err is not None and err["node_id"] == "7" and err["node_type"] == "MakeImage"
    assert err["exception_type"].endswith("BudgetExceeded") and err["traceback"] == []
    msg = err["exception_message"]
    assert "MakeImage (node 7)" in msg and "width, height" in msg and "4,096" in msg and "81,000,000" in msg
    ok = {"7": {"class_type": "MakeImage", "inputs": {"width": 64, "height": 64, "batch": 3}}}
    assert executor.execute(ok, executor.new_context("q", output_dir=tmp_path)).status == "success"
    # A context may carry its own budgets (per job). (A cached output costs nothing: it is served as is.)
    strict = executor.new_context("r", output_dir=tmp_path, budgets=JobBudgets(max_batch_pixels=64 * 64 * 2))
    ok["7"]["inputs"]["batch"] = 4
    assert executor.execute(ok, strict).status == "error"
    assert allocated == [(64, 64, 3)]
    with pytest.raises(BudgetExceeded):
        strict.check_pixels(64, 64, 3, inputs="x")


def test_wall_time_budget_ends_a_long_node_with_an_error(tmp_path) -> None:
    registry, _ = make_registry()
    executor = Executor(registry, budgets=JobBudgets(max_job_seconds=0.3))
    prompt = {
        "1": {"class_type": "Constant", "inputs": {"value": 1}},
        "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 1000, "delay": 0.01}},  # 10 s
        "3": {"class_type": "SaveText", "inputs": {"text": ["2", 0], "filename_prefix": "t"}},
    }
    start = time.monotonic()
    result = executor.execute(prompt, executor.new_context("p", output_dir=tmp_path))
    elapsed = time.monotonic() - start
    assert result.status == "error" and 0.3 <= elapsed < 2.0
    err = result.error
    assert err is not None and err["node_id"] == "2" and err["exception_type"].endswith("JobTimedOut")
    assert "--max-job-seconds" in err["exception_message"] and "0.3 s" in err["exception_message"]
    assert not (tmp_path / "t_p_3.txt").exists()
