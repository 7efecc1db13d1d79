"""Our segmentation IoUs against mmsegmentation's IoUMetric on the same predictions.

Runs when the ``mmseg`` extra is installed (``pip install -e ".[mmseg]"``, as CI does).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlora_vision.evaluation.functional.segmentation import (
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
)

mmseg_evaluation = pytest.importorskip(
    "mmseg.evaluation",
    reason="mmsegmentation is not installed: it is the optional 'mmseg' extra "
    '(pip install -e ".[mmseg]")',
)

NUM_CLASSES = 6


def _pairs(seed: int, absent: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(4):
        target = torch.randint(0, NUM_CLASSES, (23, 31), generator=gen)
        pred = torch.where(
            torch.rand(23, 31, generator=gen) < 0.6,
            target,
            torch.randint(0, NUM_CLASSES, (23, 31), generator=gen),
        )
        target[torch.rand(23, 31, generator=gen) < 0.1] = 255  # unlabelled
        if absent is not None:  # a class neither labelled nor predicted anywhere
            target[target == absent] = 0
            pred[pred == absent] = 0
        pairs.append((pred, target))
    return pairs


def _mmseg(pairs) -> dict[str, float]:
    metric = mmseg_evaluation.IoUMetric(iou_metrics=["mIoU"], ignore_index=255)
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(NUM_CLASSES)]}
    samples = [
        {"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": target[None]}}
        for pred, target in pairs
    ]
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


@pytest.mark.parametrize("absent", [None, 3])
def test_iou_equals_mmsegmentation(absent):
    pairs = _pairs(0, absent)
    confusion = sum(confusion_matrix(p, t, NUM_CLASSES) for p, t in pairs)
    areas = [
        mmseg_evaluation.IoUMetric.intersect_and_union(p, t, NUM_CLASSES, 255) for p, t in pairs
    ]
    totals = [sum(a[i] for a in areas) for i in range(4)]
    # the pixel counts are equal; mmseg divides them in float32
    tp = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp
    assert totals[0].long().tolist() == tp.tolist()
    assert totals[1].long().tolist() == union.tolist()
    per_class = mmseg_evaluation.IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])["IoU"]
    ours = iou_from_confusion(confusion).numpy()
    present = ~np.isnan(per_class)  # mmseg: NaN for a class absent from both
    np.testing.assert_allclose(ours[present], per_class[present], rtol=1e-6)
    assert (absent is None) == bool(present.all())
    # mmseg's mIoU is the nan-mean in percent, rounded to 2 decimals: our ignore_absent variant
    reported = _mmseg(pairs)["mIoU"]
    assert reported == pytest.approx(100 * mean_iou(confusion, ignore_absent=True), abs=0.005)
    if absent is None:
        assert reported == pytest.approx(100 * mean_iou(confusion), abs=0.005)
