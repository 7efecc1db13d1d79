"""Edge ODS F-measure: thinning, one-to-one matching within tolerance, threshold search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from skimage.morphology import thin

from mtlora_vision.evaluation.functional.boundary import (
    MAX_DIST,
    boundary_pr_counts,
    boundary_thresholds,
    count_matches,
    ods_f,
)
from mtlora_vision.evaluation.functional.thinning import thin_binary

SIZE = 100  # diagonal 141.4 px: PASCAL tolerance 0.0075 -> 1.06 px


def _vertical_line(col: int, rows: slice = slice(10, 90)) -> np.ndarray:
    bmap = np.zeros((SIZE, SIZE), dtype=bool)
    bmap[rows, col] = True
    return bmap


def _ods(prob: np.ndarray, gt: np.ndarray, **kwargs) -> float:
    counts = boundary_pr_counts(
        torch.from_numpy(prob), torch.from_numpy(gt.astype(np.int64)), **kwargs
    )
    return ods_f(counts)


def test_thresholds_are_bsds_grid():
    thresholds = boundary_thresholds(99)
    assert thresholds[0].item() == pytest.approx(0.01)
    assert thresholds[-1].item() == pytest.approx(0.99)
    assert torch.diff(thresholds).tolist() == pytest.approx([0.01] * 98)
    with pytest.raises(ValueError, match="num_thresholds"):
        boundary_thresholds(0)


def test_thinning_equals_scikit_image():
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = rng.integers(3, 30, size=2)
        bmap = rng.random((height, width)) < rng.uniform(0.2, 0.9)
        np.testing.assert_array_equal(thin_binary(bmap), thin(bmap))


def test_thinning_keeps_a_line_and_thins_a_band():
    line = _vertical_line(50)
    np.testing.assert_array_equal(thin_binary(line), line)
    band = _vertical_line(49) | _vertical_line(50) | _vertical_line(51)
    thinned = thin_binary(band)
    assert thinned.sum() >= 70
    assert set(np.argwhere(thinned)[:, 1].tolist()) == {50}


def _hopcroft_karp(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Second code path: scipy's Hopcroft-Karp on the same tolerance graph."""
    p, g = np.argwhere(pred), np.argwhere(gt)
    pairs = cKDTree(p).query_ball_point(g, radius)
    rows = [i for j, near in enumerate(pairs) for i in near]
    cols = [j for j, near in enumerate(pairs) for _ in near]
    graph = csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(p), len(g)))
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def test_count_matches_equals_hopcroft_karp():
    rng = np.random.default_rng(1)
    for radius in (1.0, 1.5, 3.0):
        for _ in range(5):
            pred = rng.random((30, 30)) < 0.1
            gt = rng.random((30, 30)) < 0.1
            assert count_matches(pred, gt, radius) == _hopcroft_karp(pred, gt, radius)


def test_matching_is_one_to_one():
    gt = _vertical_line(50)
    pred = _vertical_line(49) | _vertical_line(51)  # both lines within 1 px of the GT line
    assert count_matches(pred, gt, radius=1.06) == 80  # each GT pixel used once
    assert count_matches(pred, gt, radius=0.99) == 0
    assert count_matches(pred, np.zeros_like(gt), radius=5) == 0


def test_perfect_prediction_scores_100_percent():
    gt = _vertical_line(50)
    assert _ods(gt * 0.8, gt) == pytest.approx(1.0)


def test_shift_within_and_beyond_tolerance():
    gt = _vertical_line(50)
    assert SIZE * math.sqrt(2) * MAX_DIST["pascal_context"] == pytest.approx(1.0607, abs=1e-4)
    assert _ods(_vertical_line(51) * 0.8, gt) == pytest.approx(1.0)  # 1 px <= 1.06 px
    assert _ods(_vertical_line(52) * 0.8, gt) == 0.0  # 2 px > 1.06 px
    # NYUD tolerance 0.011 -> 1.56 px: still 0 at 2 px; a wider tolerance of 2.5 px matches
    assert _ods(_vertical_line(52) * 0.8, gt, max_dist=MAX_DIST["nyud"]) == 0.0
    assert _ods(_vertical_line(52) * 0.8, gt, max_dist=2.5 / (SIZE * math.sqrt(2))) == 1.0
    # half the line shifted by 1 px (matched), half by 3 px (not): P = R = 0.5
    half = _vertical_line(51, slice(10, 50)) | _vertical_line(53, slice(50, 90))
    assert _ods(half * 0.8, gt) == pytest.approx(0.5)


def test_partial_recall_and_thinning_switch():
    gt = _vertical_line(50)
    short = _vertical_line(50, slice(10, 50))  # 40 of 80 GT pixels, all correct: P 1, R 0.5
    assert _ods(short * 0.9, gt) == pytest.approx(2 * 0.5 / 1.5)
    band = (_vertical_line(49) | _vertical_line(50) | _vertical_line(51)) * 0.9
    # unthinned: 240 predicted pixels, 80 matches -> P 1/3, R 1, F 0.5
    assert _ods(band, gt, thin_pred=False) == pytest.approx(0.5)
    assert _ods(band, gt) > 0.95  # thinned to the centre line


def test_ignored_ground_truth_drops_predictions_there():
    gt = _vertical_line(50).astype(np.int64)
    pred = _vertical_line(50) | _vertical_line(20)  # second line: false positives
    assert _ods(pred * 0.8, gt) == pytest.approx(2 * 0.5 / 1.5)
    gt[:, 15:25] = 255  # the false positives now sit on unlabelled pixels
    assert _ods(pred * 0.8, gt) == pytest.approx(1.0)


def test_counts_layout_and_best_threshold_scan():
    gt = _vertical_line(50)
    prob = _vertical_line(50) * 0.3 + _vertical_line(20) * 0.6  # wrong line is more confident
    counts = boundary_pr_counts(torch.from_numpy(prob), torch.from_numpy(gt.astype(np.int64)))
    assert counts.shape == (99, 4)
    t = boundary_thresholds(99)
    low, mid = t <= 0.3, (t > 0.3) & (t <= 0.6)
    assert counts[low].tolist() == [[80, 80, 80, 160]] * int(low.sum())  # cntR sumR cntP sumP
    assert counts[mid].tolist() == [[0, 80, 0, 80]] * int(mid.sum())
    assert ods_f(counts) == pytest.approx(2 * 0.5 / 1.5)


def test_ods_interpolates_between_thresholds():
    counts = torch.tensor([[0, 10, 10, 10], [10, 10, 0, 10]])  # (P, R) = (1, 0) then (0, 1)
    assert ods_f(counts, interpolate=False) == 0.0
    assert ods_f(counts) == pytest.approx(2 * 49 * 50 / 99**2)  # best step d = 49/99
