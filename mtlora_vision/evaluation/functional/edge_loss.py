"""The official MTLoRA edge "metric" (Agiza et al., CVPR 2024): a weighted BCE proxy.

The reference validation has no boundary F-measure (that needs the SEISM MATLAB tool); it reports
the balanced BCE of the training loss with a fixed positive weight ``w = 0.95``, fed with the
sigmoid **probabilities** in the place of logits (the predictions are ``255 * sigmoid`` divided by
255 again before the loss). Reproduced faithfully, per pixel with ``x = p`` and ``y`` the label::

    l(x, y) = max(x, 0) - x * y + log(1 + exp(-|x|))
    loss = (w * sum_{y=1} l + (1 - w) * sum_{y=0} l) / n

where the sums and ``n`` run over the pixels of the whole dataset. Difference: pixels labelled
``IGNORE_INDEX`` are left out here, while the reference counts them as edges (its label test is
``>= 0.5``); the two agree whenever the edge labels hold no ignored pixel. Lower is better.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora_vision.tasks import EDGE_POS_WEIGHT, IGNORE_INDEX


def edge_loss_stats(
    prob: Tensor,
    target: Tensor,
    pos_weight: float = EDGE_POS_WEIGHT,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Weighted loss sum and pixel count of one image for the official edge loss proxy.

    Args:
        prob: Edge probabilities ``(H, W)`` in ``[0, 1]`` (used as logits, as the reference does).
        target: Edge labels ``(H, W)``: 1 edge, 0 not, ``ignore_index`` unlabelled.
        pos_weight: Weight of edge pixels; non-edge pixels get ``1 - pos_weight``.
        ignore_index: Label of unlabelled pixels.

    Returns:
        ``float64 (2,)`` on the CPU: weighted loss sum and number of labelled pixels.

    Raises:
        ValueError: If shapes differ.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob shape {tuple(prob.shape)} != target shape {tuple(target.shape)}.")
    target = target.detach().cpu().reshape(-1)
    valid = target != ignore_index
    x = prob.detach().to("cpu", torch.float64).reshape(-1)[valid]
    y = (target[valid] >= 1).to(torch.float64)
    per_pixel = x.clamp_min(0) - x * y + torch.log1p(torch.exp(-x.abs()))
    weighted = pos_weight * (per_pixel * y).sum() + (1.0 - pos_weight) * (per_pixel * (1 - y)).sum()
    return torch.stack([weighted, torch.tensor(float(x.numel()), dtype=torch.float64)])


def edge_loss(stats: Tensor) -> float:
    """Dataset edge loss from per-image sums.

    Args:
        stats: ``(N, 2)`` rows of :func:`edge_loss_stats`.

    Returns:
        Total weighted loss over total labelled pixels; NaN when there is none.
    """
    weighted, count = (float(v) for v in stats.to(torch.float64).sum(dim=0))
    return weighted / count if count > 0 else float("nan")
