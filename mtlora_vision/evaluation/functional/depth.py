"""Depth errors for NYUD-v2 multi-task evaluation (MTI-Net / ATRC protocol).

Errors are pooled over all valid pixels of the dataset: ``rmse = sqrt(sum (p - g)^2 / n)`` and
``log_rmse = sqrt(sum (log p - log g)^2 / n)``, with predictions clamped to at least ``1e-9``
before the logarithm. A pixel is valid when its ground truth is finite, positive and not
``IGNORE_INDEX``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlora_vision.tasks import IGNORE_INDEX

_MIN_DEPTH = 1e-9


def depth_stats(pred: Tensor, target: Tensor, ignore_index: float = IGNORE_INDEX) -> Tensor:
    """Squared-error sums of one image.

    Args:
        pred: Predicted depth ``(1, H, W)`` or ``(H, W)`` in metres.
        target: Ground-truth depth of the same shape; ``ignore_index`` where invalid.
        ignore_index: Value of invalid ground truth.

    Returns:
        ``float64 (3,)`` on the CPU: sum of squared errors, sum of squared log errors, count.

    Raises:
        ValueError: If shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}.")
    pred = pred.detach().to("cpu", torch.float64).reshape(-1)
    target = target.detach().to("cpu", torch.float64).reshape(-1)
    valid = (target != ignore_index) & torch.isfinite(target) & (target > 0)
    pred, target = pred[valid], target[valid]
    sq = (pred - target).square().sum()
    log_sq = (pred.clamp_min(_MIN_DEPTH).log() - target.log()).square().sum()
    return torch.stack([sq, log_sq, torch.tensor(float(target.numel()), dtype=torch.float64)])


def depth_metrics(stats: Tensor) -> dict[str, float]:
    """Reduce per-image sums to ``rmse`` and ``log_rmse``.

    Args:
        stats: ``(N, 3)`` rows of :func:`depth_stats`.

    Returns:
        ``rmse`` (metres) and ``log_rmse``; NaN when there is no valid pixel.
    """
    sq, log_sq, count = (float(v) for v in stats.to(torch.float64).sum(dim=0))
    if count == 0:
        return {"rmse": math.nan, "log_rmse": math.nan}
    return {"rmse": math.sqrt(sq / count), "log_rmse": math.sqrt(log_sq / count)}
