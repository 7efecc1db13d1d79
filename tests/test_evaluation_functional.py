"""Pure metric maths against values computed by hand or by an independent implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlora_vision.evaluation.functional.delta_m import delta_m
from mtlora_vision.evaluation.functional.depth import depth_metrics, depth_stats
from mtlora_vision.evaluation.functional.edge_loss import edge_loss, edge_loss_stats
from mtlora_vision.evaluation.functional.normals import (
    angular_error,
    histogram_median,
    normals_metrics,
    normals_stats,
)
from mtlora_vision.evaluation.functional.saliency import (
    SAL_THRESHOLDS,
    f_measure,
    saliency_max_f,
    saliency_max_iou,
    saliency_stats,
)
from mtlora_vision.evaluation.functional.segmentation import (
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
)

# ---------------------------------------------------------------- segmentation

SEG_TARGET = torch.tensor([[0, 0, 1], [1, 1, 2], [255, 2, 2]])
SEG_PRED = torch.tensor([[0, 1, 1], [1, 0, 2], [2, 2, 0]])


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(SEG_PRED, SEG_TARGET, num_classes=3)
    assert conf.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 2]]
    assert conf.dtype == torch.int64


def test_iou_and_miou_by_hand():
    conf = confusion_matrix(SEG_PRED, SEG_TARGET, num_classes=3)
    # class 0: TP 1, FP 2, FN 1; class 1: TP 2, FP 1, FN 1; class 2: TP 2, FP 0, FN 1
    torch.testing.assert_close(
        iou_from_confusion(conf), torch.tensor([1 / 4, 2 / 4, 2 / 3], dtype=torch.float64)
    )
    assert mean_iou(conf) == pytest.approx((1 / 4 + 1 / 2 + 2 / 3) / 3)


def test_absent_class_counts_zero_unless_ignored():
    conf = confusion_matrix(SEG_PRED, SEG_TARGET, num_classes=4)
    assert iou_from_confusion(conf)[3] == 0
    assert mean_iou(conf) == pytest.approx((1 / 4 + 1 / 2 + 2 / 3) / 4)  # official: over all K
    assert mean_iou(conf, ignore_absent=True) == pytest.approx((1 / 4 + 1 / 2 + 2 / 3) / 3)


def _set_based_iou(preds, targets, num_classes):
    """Independent IoU: per class, |intersection| / |union| of pixel index sets over the dataset."""
    inter = [set() for _ in range(num_classes)]
    union = [set() for _ in range(num_classes)]
    for image, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        for pos, (p, t) in enumerate(
            zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True)
        ):
            if t == 255:
                continue
            key = (image, pos)
            union[p].add(key)
            union[t].add(key)
            if p == t:
                inter[t].add(key)
    return [len(i) / len(u) if u else 0.0 for i, u in zip(inter, union, strict=True)]


def test_miou_matches_independent_set_implementation():
    gen = torch.Generator().manual_seed(3)
    num_classes = 5
    preds = [torch.randint(0, num_classes, (9, 11), generator=gen) for _ in range(4)]
    targets = [torch.randint(0, num_classes, (9, 11), generator=gen) for _ in range(4)]
    for target in targets:
        target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    conf = sum(confusion_matrix(p, t, num_classes) for p, t in zip(preds, targets, strict=True))
    expected = _set_based_iou(preds, targets, num_classes)
    assert iou_from_confusion(conf).tolist() == pytest.approx(expected)
    assert mean_iou(conf) == pytest.approx(sum(expected) / num_classes)


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="class id 3 outside"):
        confusion_matrix(torch.tensor([[3]]), torch.tensor([[0]]), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3), num_classes=3)
    # a wrong prediction on an ignored pixel is fine
    conf = confusion_matrix(torch.tensor([[7, 0]]), torch.tensor([[255, 0]]), num_classes=3)
    assert int(conf.sum()) == 1


# ---------------------------------------------------------------- saliency


def test_saliency_thresholds_are_official():
    assert SAL_THRESHOLDS.tolist() == pytest.approx(np.linspace(0.2, 0.9, 15).tolist())


def test_saliency_three_images_by_hand():
    # image 1: p 0.95/0.62 on salient pixels, 0.1 on background, one ignored pixel
    s1 = saliency_stats(torch.tensor([[0.95, 0.62], [0.1, 0.99]]), torch.tensor([[1, 1], [0, 255]]))
    # image 2: empty ground truth, empty prediction -> Jaccard 1
    s2 = saliency_stats(torch.full((2, 2), 0.1), torch.zeros(2, 2, dtype=torch.long))
    # image 3: empty ground truth, non-empty prediction -> Jaccard 0
    s3 = saliency_stats(
        torch.tensor([[0.95, 0.0], [0.0, 0.0]]), torch.zeros(2, 2, dtype=torch.long)
    )
    low = SAL_THRESHOLDS < 0.62  # 0.2 ... 0.6: both salient pixels predicted
    assert int(low.sum()) == 9
    assert s1[0].tolist() == pytest.approx(torch.where(low, 1.0, 0.5).tolist())
    assert s1[1].tolist() == pytest.approx([1.0] * 15)
    assert s1[2].tolist() == pytest.approx(torch.where(low, 1.0, 0.5).tolist())
    assert s2[0].tolist() == [1.0] * 15
    assert s2[1:].abs().max() == 0  # no prediction, no ground truth: precision = recall = 0
    assert s3[0].tolist() == [0.0] * 15

    stats = torch.stack([s1, s2, s3])
    assert saliency_max_iou(stats) == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3 at low thresholds
    # low thresholds: P = R = 1/3 -> F1 = 1/3; high: P = 1/3, R = 1/6 -> F1 = 2/9
    assert saliency_max_f(stats) == pytest.approx(1 / 3)


def test_saliency_threshold_is_strict_and_all_ignored_image_scores_one():
    at = saliency_stats(torch.tensor([[0.5]]), torch.tensor([[1]]), torch.tensor([0.5]))
    assert at[0].item() == 0.0  # p > tau, not >=
    ignored = saliency_stats(torch.tensor([[0.9, 0.9]]), torch.tensor([[255, 255]]))
    assert ignored[0].tolist() == [1.0] * 15


def test_f_beta_by_hand():
    p, r = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0])
    assert f_measure(p, r).tolist() == pytest.approx([2 / 3, 0.0])
    assert f_measure(p, r, beta_squared=0.3).tolist() == pytest.approx([1.3 * 0.5 / 0.8, 0.0])
    stats = torch.tensor([[[0.5], [1.0], [0.5]]], dtype=torch.float64)  # one image, one threshold
    assert saliency_max_f(stats, beta_squared=0.3) == pytest.approx(0.8125)


# ---------------------------------------------------------------- normals


def _normals_case():
    degrees = [0.0, 20.0, 45.0, 90.0]
    gt = torch.zeros(3, 2, 3)
    gt[2] = 1.0
    pred = torch.zeros(3, 2, 3)
    for i, deg in enumerate(degrees):
        pred[0].view(-1)[i] = math.sin(math.radians(deg))
        pred[2].view(-1)[i] = math.cos(math.radians(deg))
    pred[:, 1, 1] = torch.tensor([0.0, 0.0, 2.0])  # not unit length: normalised -> 0 degrees
    gt[:, 1, 2] = 255.0  # invalid pixel
    pred[:, 1, 2] = torch.tensor([1.0, 0.0, 0.0])
    return pred, gt


def test_angular_error_by_hand():
    pred, gt = _normals_case()
    errors = angular_error(pred, gt)
    assert errors.tolist() == pytest.approx([0.0, 20.0, 45.0, 90.0, 0.0], abs=1e-5)  # float32 input


def test_normals_metrics_by_hand_and_rmse_is_not_mean():
    pred, gt = _normals_case()
    values = normals_metrics([normals_stats(angular_error(pred, gt))])
    assert values["mean"] == pytest.approx(155 / 5)
    assert values["rmse"] == pytest.approx(math.sqrt((400 + 2025 + 8100) / 5))
    assert values["rmse"] > values["mean"] + 10
    assert values["median"] == pytest.approx(20.0, abs=0.05)
    assert values["11.25"] == pytest.approx(2 / 5)
    assert values["22.5"] == pytest.approx(3 / 5)
    assert values["30"] == pytest.approx(3 / 5)


def test_normals_pool_pixels_not_images():
    small = normals_stats(torch.tensor([90.0]))
    large = normals_stats(torch.zeros(9, dtype=torch.float64))
    assert normals_metrics([small, large])["mean"] == pytest.approx(9.0)  # not (90 + 0) / 2


def test_histogram_median_close_to_numpy():
    gen = torch.Generator().manual_seed(0)
    for count in (1, 2, 7, 1000, 1001):
        errors = torch.rand(count, generator=gen, dtype=torch.float64) * 70
        hist = normals_stats(errors, bin_width=0.05)["hist"]
        assert histogram_median(hist, 0.05) == pytest.approx(np.median(errors.numpy()), abs=0.05)


def test_normals_no_valid_pixel_gives_nan():
    gt = torch.full((3, 2, 2), 255.0)
    values = normals_metrics([normals_stats(angular_error(torch.ones(3, 2, 2), gt))])
    assert all(math.isnan(v) for v in values.values())


# ---------------------------------------------------------------- depth and edge loss


def test_depth_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[1.0, 4.0], [255.0, 2.0]]])
    values = depth_metrics(depth_stats(pred, target)[None])
    assert values["rmse"] == pytest.approx(math.sqrt(8 / 3))
    assert values["log_rmse"] == pytest.approx(math.sqrt(2 * math.log(2) ** 2 / 3))


def test_edge_loss_proxy_by_hand():
    prob = torch.tensor([[0.5, 0.0], [1.0, 0.2]])
    target = torch.tensor([[1, 0], [0, 255]])
    pos = math.log1p(math.exp(-0.5))  # l(0.5, 1)
    neg = math.log(2) + (1 + math.log1p(math.exp(-1)))  # l(0, 0) + l(1, 0)
    expected = (0.95 * pos + 0.05 * neg) / 3
    stats = edge_loss_stats(prob, target)
    assert edge_loss(stats[None]) == pytest.approx(expected)
    # second path: torch's BCE-with-logits on the probabilities, weighted per pixel
    x, y = torch.tensor([0.5, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert edge_loss(stats[None]) == pytest.approx(float((bce * (0.05 + 0.9 * y)).sum() / 3))


# ---------------------------------------------------------------- Delta-m

BASELINE = {"semseg": 67.21, "human_parts": 61.93, "sal": 62.35, "normals": 17.97}


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"semseg": 68.19, "human_parts": 58.99, "sal": 64.48, "normals": 17.03}, 1.34),  # r16
        ({"semseg": 67.74, "human_parts": 59.46, "sal": 64.90, "normals": 16.59}, 2.14),  # r32
        ({"semseg": 67.90, "human_parts": 59.84, "sal": 65.40, "normals": 16.60}, 2.54),  # r64
    ],
)
def test_delta_m_reproduces_paper_rows(row, expected):
    assert delta_m(row, BASELINE, {"normals"}) == pytest.approx(expected, abs=0.02)


def test_delta_m_by_hand_and_errors():
    assert delta_m({"a": 110.0, "b": 90.0}, {"a": 100.0, "b": 100.0}, {"b"}) == pytest.approx(10.0)
    assert delta_m({"a": 110.0, "b": 90.0}, {"a": 100.0, "b": 100.0}, set()) == pytest.approx(0.0)
    with pytest.raises(KeyError, match="b"):
        delta_m({"a": 1.0}, {"a": 1.0, "b": 1.0}, set())
    with pytest.raises(ValueError, match="is 0"):
        delta_m({"a": 1.0}, {"a": 0.0}, set())
