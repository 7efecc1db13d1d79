"""Confusion-matrix IoU for semantic segmentation and human parts (MTLoRA, Agiza et al., CVPR 2024).

The official evaluation accumulates per-class true positives, false positives and false negatives
over the whole validation set, ignoring pixels labelled ``IGNORE_INDEX``, and reports
``IoU_k = TP_k / max(TP_k + FP_k + FN_k, 1e-8)`` averaged over **all** classes, background
included. A class that never occurs in the ground truth nor in the predictions therefore
counts as 0 in that mean; :func:`mean_iou` can leave such classes out instead.

All functions return fractions in ``[0, 1]``; callers scale to percent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora_vision.tasks import IGNORE_INDEX

#: Smallest union used as a denominator, as in the official code.
_UNION_EPS = 1e-8


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Count (ground truth, prediction) class pairs over the labelled pixels of one map.

    Args:
        pred: Predicted class ids ``(H, W)`` (any integer dtype, any device).
        target: Ground-truth class ids ``(H, W)``; ``ignore_index`` marks unlabelled pixels.
        num_classes: Number of classes ``K``.
        ignore_index: Label of pixels left out of the counts.

    Returns:
        ``int64 (K, K)`` on the CPU: entry ``[t, p]`` counts pixels of class ``t`` predicted
        as ``p``.

    Raises:
        ValueError: If shapes differ, or a labelled pixel holds a class id outside ``[0, K)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}.")
    pred = pred.detach().to("cpu", torch.int64).reshape(-1)
    target = target.detach().to("cpu", torch.int64).reshape(-1)
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    for name, labels in (("target", target), ("pred", pred)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise ValueError(
                f"{name} holds class id {int(bad[0])} outside [0, {num_classes}) on a labelled "
                f"pixel; check num_classes or use {ignore_index} for ignored pixels."
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """Per-class intersection over union from a (summed) confusion matrix.

    Args:
        confusion: ``(K, K)`` counts, rows ground truth, columns prediction.

    Returns:
        ``float64 (K,)``: ``TP / max(TP + FP + FN, 1e-8)``; 0 for a class absent from both.
    """
    confusion = confusion.to(torch.float64)
    tp = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp
    return tp / union.clamp_min(_UNION_EPS)


def class_present(confusion: Tensor) -> Tensor:
    """Whether each class occurs in the ground truth or the predictions.

    Args:
        confusion: ``(K, K)`` counts.

    Returns:
        ``bool (K,)``.
    """
    return (confusion.sum(dim=0) + confusion.sum(dim=1)) > 0


def mean_iou(confusion: Tensor, ignore_absent: bool = False) -> float:
    """Mean IoU over classes.

    Args:
        confusion: ``(K, K)`` counts summed over the dataset.
        ignore_absent: Average only over classes present in ground truth or predictions. The
            official protocol (``False``) averages over all ``K`` classes.

    Returns:
        The mean IoU as a fraction; 0 when ``ignore_absent`` and no class is present.
    """
    iou = iou_from_confusion(confusion)
    if ignore_absent:
        iou = iou[class_present(confusion)]
        if iou.numel() == 0:
            return 0.0
    return float(iou.mean())
