"""Saliency metrics of the MTLoRA protocol (Agiza et al., CVPR 2024): max-threshold IoU, maxF.

For each threshold ``tau`` in ``linspace(0.2, 0.9, 15)`` the probability map is binarised as
``p > tau`` and compared with the ground truth on labelled pixels (``IGNORE_INDEX`` excluded):

* Jaccard per image; an image whose ground truth and prediction are both empty scores 1
  (so does an image with no labelled pixel). The paper's "Sal mIoU" is the image mean of the
  Jaccard, maximised over ``tau``.
* Precision ``TP / (TP + FP + 1e-12)`` and recall ``TP / (TP + FN + 1e-12)`` per image (so 0
  when the denominator is 0), averaged over images. ``maxF`` is the F1 of the averaged precision
  and recall, maximised over ``tau``.

Per-image statistics are ``(3, T)``: rows Jaccard, precision, recall. Results are fractions.

The F-beta of salient-object detection (Achanta et al., CVPR 2009; beta^2 = 0.3) is computed
apart (:func:`saliency_level_histograms`, :func:`saliency_max_fbeta`): the prediction is taken as
its 8-bit PNG ``round(255 p)``, each level ``k = 1 .. 255`` is a threshold (``png >= k``), and
the true-positive, predicted and ground-truth pixel counts are summed over the whole dataset
before precision, recall and F-beta are formed; the result is the maximum over the 255
thresholds. ``docs/edge_evaluation.md`` compares it with the per-image-averaged variant.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora_vision.tasks import IGNORE_INDEX

#: The 15 thresholds of the official evaluation.
SAL_THRESHOLDS: Tensor = torch.linspace(0.2, 0.9, 15, dtype=torch.float64)

_PR_EPS = 1e-12


def saliency_stats(
    prob: Tensor,
    target: Tensor,
    thresholds: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Per-threshold Jaccard, precision and recall of one image.

    Args:
        prob: Saliency probabilities ``(H, W)`` in ``[0, 1]``.
        target: Ground truth ``(H, W)``: 1 salient, 0 background, ``ignore_index`` unlabelled.
        thresholds: ``(T,)`` thresholds; defaults to :data:`SAL_THRESHOLDS`.
        ignore_index: Label of unlabelled pixels.

    Returns:
        ``float64 (3, T)`` on the CPU: Jaccard, precision and recall per threshold.

    Raises:
        ValueError: If shapes differ.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob shape {tuple(prob.shape)} != target shape {tuple(target.shape)}.")
    thresholds = SAL_THRESHOLDS if thresholds is None else thresholds.to(torch.float64)
    target = target.detach().cpu().reshape(-1)
    valid = target != ignore_index
    gt = target[valid] >= 1  # (M,)
    prob = prob.detach().to("cpu", torch.float64).reshape(-1)[valid]
    pred = prob[None, :] > thresholds[:, None]  # (T, M)
    tp = (pred & gt).sum(dim=1).to(torch.float64)
    n_pred = pred.sum(dim=1).to(torch.float64)
    n_gt = gt.sum().to(torch.float64)
    union = n_pred + n_gt - tp
    jaccard = torch.where(union > 0, tp / union.clamp_min(1.0), torch.ones_like(tp))
    precision = tp / (n_pred + _PR_EPS)
    recall = tp / (n_gt + _PR_EPS)
    return torch.stack([jaccard, precision, recall])


def saliency_max_iou(stats: Tensor) -> float:
    """Image-averaged Jaccard, maximised over thresholds.

    Args:
        stats: ``(N, 3, T)`` per-image statistics from :func:`saliency_stats`.

    Returns:
        The paper's saliency mIoU as a fraction.
    """
    return float(stats[:, 0].mean(dim=0).max())


def f_measure(precision: Tensor, recall: Tensor, beta_squared: float = 1.0) -> Tensor:
    """F-beta of precision and recall, 0 where both are 0.

    Args:
        precision: Precision values, any shape.
        recall: Recall values, same shape.
        beta_squared: ``beta**2``; 1 gives F1, 0.3 the salient-object-detection convention.

    Returns:
        ``(1 + b2) P R / (b2 P + R)`` with the shape of the inputs.
    """
    denom = beta_squared * precision + recall
    safe = denom.clamp_min(torch.finfo(denom.dtype).tiny)
    score = (1.0 + beta_squared) * precision * recall / safe
    return torch.where(denom > 0, score, torch.zeros_like(score))


def saliency_max_f(stats: Tensor, beta_squared: float = 1.0) -> float:
    """F-measure of image-averaged precision and recall, maximised over thresholds.

    Args:
        stats: ``(N, 3, T)`` per-image statistics from :func:`saliency_stats`.
        beta_squared: 1 for the paper-line ``maxF`` (F1); 0.3 for the F-beta variant.

    Returns:
        The maximum F as a fraction.
    """
    mean = stats.mean(dim=0)
    return float(f_measure(mean[1], mean[2], beta_squared).max())


#: 8-bit levels used as F-beta thresholds: ``png >= k`` for ``k = 1 .. 255``.
SAL_FBETA_LEVELS: int = 256


def saliency_level_histograms(
    prob: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Labelled pixels per 8-bit prediction level, all and salient ones.

    Args:
        prob: Saliency probabilities ``(H, W)`` in ``[0, 1]``.
        target: Ground truth ``(H, W)``: 1 salient, 0 background, ``ignore_index`` unlabelled.
        ignore_index: Label of unlabelled pixels.

    Returns:
        ``int64 (2, 256)``: row 0 counts labelled pixels at each level ``round(255 p)``, row 1
        the salient ones among them.

    Raises:
        ValueError: If shapes differ.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob shape {tuple(prob.shape)} != target shape {tuple(target.shape)}.")
    target = target.detach().cpu().reshape(-1)
    valid = target != ignore_index
    levels = (prob.detach().float().cpu().reshape(-1)[valid].clamp(0, 1) * 255).round().long()
    salient = target[valid] >= 1
    every = torch.bincount(levels, minlength=SAL_FBETA_LEVELS)
    positive = torch.bincount(levels[salient], minlength=SAL_FBETA_LEVELS)
    return torch.stack([every, positive])


def saliency_max_fbeta(histograms: Tensor, beta_squared: float = 0.3) -> float:
    """Maximum F-beta over the thresholds ``png >= k`` (``k = 1..255``), counts pooled.

    Args:
        histograms: ``(2, 256)`` :func:`saliency_level_histograms` summed over the dataset.
        beta_squared: ``beta**2`` (0.3 in salient-object detection).

    Returns:
        ``max_k F_beta(TP_k / P_k, TP_k / G)`` with ``P_k`` the pixels predicted salient and ``G``
        the salient pixels of the dataset (precision or recall 0 when its denominator is 0).
    """
    at_or_above = histograms.to(torch.float64).flip(-1).cumsum(-1).flip(-1)[:, 1:]  # (2, 255)
    predicted, true_positive = at_or_above[0], at_or_above[1]
    salient = histograms[1].sum().to(torch.float64)
    precision = true_positive / predicted.clamp_min(1.0)
    recall = true_positive / salient.clamp_min(1.0)
    return float(f_measure(precision, recall, beta_squared).max())
