"""Edge F1 (evaluation.control.edge_f1) against hand-counted cases."""

from __future__ import annotations

import pytest
import torch

from latentworks.evaluation.control import edge_f1


def _map(pixels: list[tuple[int, int]], size: int = 5) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    for r, c in pixels:
        m[r, c] = True
    return m


TARGET = _map([(r, 1) for r in range(5)])  # a vertical line in column 1: 5 pixels
# Three pixels one column to the right of it (rows 0-2) and one far away in the corner: 4 pixels.
PREDICTED = _map([(0, 2), (1, 2), (2, 2), (4, 4)])


def test_one_pixel_tolerance_by_hand() -> None:
    s = edge_f1(PREDICTED, TARGET, tolerance=1)
    # Precision: (0,2), (1,2), (2,2) touch the line (Chebyshev distance 1); (4,4) is 3 away -> 3/4.
    # Recall: (0,1), (1,1), (2,1) touch a predicted pixel, and (3,1) touches (2,2) diagonally; (4,1) is 2
    # from (2,2) and 3 from (4,4) -> 4/5.
    p, r = 3 / 4, 4 / 5
    assert s.precision.tolist() == pytest.approx([p])
    assert s.recall.tolist() == pytest.approx([r])
    assert s.f1.tolist() == pytest.approx([2 * p * r / (p + r)])  # 0.7742


def test_no_tolerance_needs_exact_overlap_and_more_tolerance_forgives_more() -> None:
    assert edge_f1(PREDICTED, TARGET, tolerance=0).f1.tolist() == [0.0]
    s = edge_f1(PREDICTED, TARGET, tolerance=3)  # everything within 3 pixels
    assert s.precision.tolist() == [1.0] and s.recall.tolist() == [1.0]


def test_empty_maps_and_batches() -> None:
    empty = torch.zeros(5, 5, dtype=torch.bool)
    batch_pred = torch.stack([PREDICTED, empty, empty, TARGET])
    batch_tgt = torch.stack([TARGET, empty, TARGET, TARGET])
    f1 = edge_f1(batch_pred, batch_tgt).f1.tolist()
    assert f1[0] == pytest.approx(2 * 0.75 * 0.8 / 1.55)
    assert f1[1:] == [
        1.0,
        0.0,
        1.0,
    ]  # both empty: perfect; nothing drawn for a real edge map: 0; identical: 1
    with pytest.raises(ValueError, match="same shape"):
        edge_f1(PREDICTED, torch.zeros(4, 4, dtype=torch.bool))
