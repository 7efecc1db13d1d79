"""SEISM edge protocol: each step against hand-computed cases, the kernel against a second path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlora_vision.evaluation.functional.boundary import (
    average_precision,
    boundary_pr_counts,
    bsds_precision_recall,
    count_matches,
    ods_f,
    ois_f,
)
from mtlora_vision.evaluation.functional.edge_kernels import disk_offsets
from mtlora_vision.evaluation.functional.seism import (
    SEISM_THRESHOLDS,
    level_thresholds,
    png_levels,
    seg2bmap,
    seism_gt_boundaries,
    seism_ods,
    seism_pr_counts,
    seism_precision_recall,
)
from mtlora_vision.evaluation.functional.thinning import thin_binary


def test_thresholds_are_mti_nets_list():
    assert SEISM_THRESHOLDS.tolist() == [float(f"{k / 100:.2f}") for k in range(1, 100)]


def test_level_thresholds_by_hand_and_by_comparison():
    # 2/255 = 0.0078 < 0.01 <= 3/255; 127/255 < 0.5 <= 128/255; 252/255 < 0.99 <= 253/255
    assert level_thresholds(np.array([0.01, 0.5, 0.99])).tolist() == [3, 128, 253]
    levels = np.arange(256)
    for t, first in zip(SEISM_THRESHOLDS, level_thresholds(), strict=True):
        passing = levels[levels / 255.0 >= t]  # MTI-Net's read_one_png: png / 255 >= t
        assert first == passing.min()


def test_png_levels_equal_the_prediction_writer():
    from mtlora_vision.engine.visualization_hook import prediction_to_file_array

    prob = torch.rand(7, 9, generator=torch.Generator().manual_seed(0))
    prob[0, :3] = torch.tensor([0.0, 1.0, 0.5 / 255])
    written = prediction_to_file_array("edge", prob[None]).reshape(prob.shape)
    np.testing.assert_array_equal(png_levels(prob), written)


def test_seg2bmap_by_hand():
    labels = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    # interior: differs from E, S or SE; last column: from S; last row: from E; corner never
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(labels), expected)
    assert not seg2bmap(np.full((4, 5), 7)).any()
    with pytest.raises(ValueError, match="label map"):
        seg2bmap(np.zeros((2, 2, 2)))


def test_seism_gt_boundaries_are_one_pixel_wide():
    labels = np.zeros((20, 20), dtype=np.int64)
    labels[5:15, 5:15] = 1  # a square: seg2bmap marks its border half a pixel towards the origin
    bmap = seism_gt_boundaries(labels)
    raw = seg2bmap(labels)
    assert bmap.dtype == np.uint8
    assert set(np.unique(bmap)) <= {0, 1}
    np.testing.assert_array_equal(bmap.astype(bool), thin_binary(raw))
    assert raw[4, 5:14].all()  # the row just above the square
    assert raw[5:14, 4].all()  # the column just left of it


def test_precision_recall_conventions():
    counts = np.array([[0, 0, 0, 0], [0, 5, 0, 0], [3, 6, 3, 4]])
    precision, recall = seism_precision_recall(counts)
    assert precision.tolist() == [0.0, 1.0, 0.75]
    assert recall.tolist() == [1.0, 0.0, 0.5]
    precision, recall = bsds_precision_recall(counts)
    assert precision.tolist() == [0.0, 0.0, 0.75]
    assert recall.tolist() == [0.0, 0.0, 0.5]


def test_ods_is_the_plain_maximum():
    counts = np.array([[4, 10, 4, 8], [3, 10, 3, 3]])
    # P, R = (0.5, 0.4) -> F 4/9; (1, 0.3) -> F 6/13
    assert seism_ods(counts) == pytest.approx(6 / 13)
    assert ods_f(torch.from_numpy(counts)) > 6 / 13 + 1e-3  # BSDS interpolates between them


def test_ois_by_hand():
    per_image = np.array(
        [
            [[2, 4, 2, 4], [1, 4, 1, 1]],  # F 0.5, 0.4 -> first threshold
            [[1, 4, 1, 8], [1, 4, 1, 1]],  # F 1/6, 0.4 -> second threshold
        ]
    )
    # summed best counts: cntR 3, sumR 8, cntP 3, sumP 5 -> R 0.375, P 0.6
    expected = 2 * 0.6 * 0.375 / (0.6 + 0.375)
    assert ois_f(per_image, seism_precision_recall) == pytest.approx(expected)
    assert ois_f(per_image) == pytest.approx(expected)
    ties = np.array([[[1, 2, 1, 2], [1, 2, 1, 2]]])  # equal F: the first threshold is taken
    assert ois_f(ties) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="N, T, 4"):
        ois_f(np.zeros((3, 4)))


def test_average_precision_by_hand():
    # P = 1.1 - R between R = 0.2 and 0.6; grid points 0.20 .. 0.60 (41 of them):
    # sum (1.1 - k / 100) for k = 20..60 = 45.1 - 16.4 = 28.7, divided by 100
    assert average_precision(np.array([0.9, 0.5]), np.array([0.2, 0.6])) == pytest.approx(0.287)
    # repeated recall values keep the first threshold's precision (MATLAB's unique)
    assert average_precision(np.array([0.9, 0.1, 0.5]), np.array([0.2, 0.2, 0.6])) == pytest.approx(
        0.287
    )
    assert average_precision(np.array([0.4, 0.3]), np.array([0.5, 0.5])) == 0.0


def _reference_counts(levels, gt, valid, radius, thresholds, thin):
    """Second code path: threshold, thin and match each map from scratch (max flow)."""
    rows = []
    for t in thresholds:
        bmap = levels / 255.0 >= t
        if thin:
            bmap = thin_binary(bmap)
        bmap &= valid
        matched = count_matches(bmap, gt & valid, radius)
        rows.append([matched, int((gt & valid).sum()), matched, int(bmap.sum())])
    return np.array(rows)


@pytest.mark.parametrize("thin", [True, False])
def test_seism_counts_equal_the_step_by_step_path(thin):
    rng = np.random.default_rng(3)
    for trial in range(4):
        labels = rng.integers(0, 4, size=(6, 8)).repeat(6, axis=0).repeat(6, axis=1)
        gt = seism_gt_boundaries(labels).astype(np.int64)
        noise = rng.random(gt.shape) * (0.3 if trial % 2 else 0.05)
        prob = np.clip(np.roll(gt, trial % 3, axis=1) * 0.8 + noise, 0, 1).astype(np.float32)
        if trial == 3:
            gt[:10, :10] = 255  # unlabelled block: predictions there are dropped
        valid = gt != 255
        counts = seism_pr_counts(torch.from_numpy(prob), torch.from_numpy(gt), 0.02, thin_pred=thin)
        radius = 0.02 * math.hypot(*gt.shape)
        expected = _reference_counts(
            png_levels(torch.from_numpy(prob)), gt == 1, valid, radius, SEISM_THRESHOLDS, thin
        )
        np.testing.assert_array_equal(counts.numpy(), expected)


def test_bsds_counts_equal_the_step_by_step_path():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=(5, 5)).repeat(8, axis=0).repeat(8, axis=1)
    gt = seism_gt_boundaries(labels).astype(bool)
    prob = np.clip(gt * 0.7 + rng.random(gt.shape) * 0.4, 0, 1)
    thresholds = np.linspace(0.05, 0.95, 19)
    counts = boundary_pr_counts(
        torch.from_numpy(prob),
        torch.from_numpy(gt.astype(np.int64)),
        0.03,
        torch.from_numpy(thresholds),
    )
    radius = 0.03 * math.hypot(*gt.shape)
    rows = []
    for t in thresholds:
        bmap = thin_binary(prob >= t)
        matched = count_matches(bmap, gt, radius)
        rows.append([matched, int(gt.sum()), matched, int(bmap.sum())])
    np.testing.assert_array_equal(counts.numpy(), np.array(rows))


def test_seism_counts_by_hand():
    gt = np.zeros((40, 40), dtype=np.int64)
    gt[5:35, 20] = 1  # 30 boundary pixels
    prob = np.zeros((40, 40), dtype=np.float32)
    prob[5:25, 21] = 0.6  # 20 pixels one column off the line
    prob[25:35, 20] = 0.3  # 10 pixels on the line
    counts = seism_pr_counts(torch.from_numpy(prob), torch.from_numpy(gt), 0.02).numpy()
    # radius 0.02 * 56.57 = 1.13 px: the shifted pixels match too
    t_low, t_mid, t_high = 0, 40, 70  # thresholds 0.01, 0.41, 0.71
    assert counts[t_low].tolist() == [30, 30, 30, 30]
    assert counts[t_mid].tolist() == [20, 30, 20, 20]
    assert counts[t_high].tolist() == [0, 30, 0, 0]
    tight = seism_pr_counts(torch.from_numpy(prob), torch.from_numpy(gt), 0.0075).numpy()
    assert tight[t_mid].tolist() == [0, 30, 0, 20]  # 0.42 px: only exact positions match


def test_disk_offsets_by_hand():
    assert disk_offsets(0.5).tolist() == [[0, 0]]
    assert sorted(map(tuple, disk_offsets(1.0).tolist())) == [
        (-1, 0),
        (0, -1),
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    assert len(disk_offsets(1.5)) == 9  # the 3x3 square: corners at sqrt(2) <= 1.5
    assert len(disk_offsets(2.0)) == 13  # plus the four at distance 2
    assert disk_offsets(2.0)[0].tolist() == [0, 0]  # nearest first
