"""The SEISM edge protocol behind the published PASCAL-Context / NYUD-v2 edge numbers.

MTI-Net (Vandenhende et al., ECCV 2020), ATRC and InvPT score the saved 8-bit edge PNGs with the
SEISM MATLAB package (Pont-Tuset and Marques) built on Dollar's ``edgesEvalImg`` and the BSDS
``correspondPixels`` matcher. ``docs/edge_evaluation.md`` states each step and the file it comes
from; the steps here are:

1. :func:`png_levels`: the prediction as the 8-bit PNG that is scored, ``round(255 p)``.
2. :func:`level_thresholds`: thresholds ``0.01, 0.02, ..., 0.99`` applied as ``png / 255 >= t``,
   i.e. the smallest 8-bit level that passes each threshold.
3. Thinning of each thresholded map (``edgesEvalImg``'s default ``thin=1``) and one-to-one
   matching within ``max_dist`` times the image diagonal: the same kernel as the BSDS mode
   (:mod:`~mtlora_vision.evaluation.functional.edge_kernels`).
4. Ground truth: :func:`seg2bmap` of the label map, then thinned
   (:func:`seism_gt_boundaries`).
5. :func:`seism_precision_recall` with SEISM's conventions for empty sums; ODS is the plain
   maximum of F over thresholds of the dataset-summed counts (:func:`seism_ods`), OIS each image
   at its own best threshold (:func:`~mtlora_vision.evaluation.functional.boundary.ois_f`) and AP
   the area under the dataset curve
   (:func:`~mtlora_vision.evaluation.functional.boundary.average_precision`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.morphology import thin
from torch import Tensor

from mtlora_vision.evaluation.functional.boundary import f_measure, nested_threshold_order
from mtlora_vision.evaluation.functional.edge_kernels import pr_counts_all_thresholds
from mtlora_vision.tasks import IGNORE_INDEX

#: SEISM's thresholds as MTI-Net's ``eval_edge.py`` writes them: ``0.01, 0.02, ..., 0.99``.
SEISM_THRESHOLDS: np.ndarray = np.arange(1, 100) / 100.0


def png_levels(prob: Tensor) -> np.ndarray:
    """Edge probabilities as the 8-bit PNG ``tools/test.py --out-dir`` writes.

    Args:
        prob: ``(H, W)`` probabilities.

    Returns:
        ``uint8 (H, W)``: ``round(255 * clamp(p, 0, 1))`` computed in float32.
    """
    values = np.clip(prob.detach().to("cpu", torch.float32).numpy(), 0, 1) * np.float32(255)
    return np.rint(values).astype(np.uint8)  # float32 maths, half to even: as torch's round


def level_thresholds(thresholds: np.ndarray = SEISM_THRESHOLDS) -> np.ndarray:
    """Smallest 8-bit level ``v`` with ``v / 255 >= t`` for each threshold (MTI-Net's reader).

    Args:
        thresholds: ``(T,)`` float64 thresholds.

    Returns:
        ``int64 (T,)`` levels (256 where no level passes).
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    passes = levels[None, :] >= np.asarray(thresholds, dtype=np.float64)[:, None]
    return np.where(passes.any(axis=1), passes.argmax(axis=1), 256).astype(np.int64)


def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """Boundary map of a label map, as the BSDS ``seg2bmap`` SEISM applies to the ground truth.

    A pixel is a boundary pixel when its label differs from its east, south or south-east
    neighbour; in the last row only the east neighbour counts, in the last column only the
    south one, and the bottom-right pixel is never a boundary (boundaries sit half a pixel
    towards the origin from the true segment border).

    Args:
        labels: Integer ``(H, W)`` label map.

    Returns:
        Boolean ``(H, W)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"seg2bmap needs a (H, W) label map, got shape {labels.shape}.")
    out = np.zeros(labels.shape, dtype=bool)
    east = labels[:, :-1] != labels[:, 1:]
    south = labels[:-1, :] != labels[1:, :]
    out[:-1, :-1] = east[:-1, :] | south[:, :-1] | (labels[:-1, :-1] != labels[1:, 1:])
    out[-1, :-1] = east[-1, :]
    out[:-1, -1] = south[:, -1]
    return out


def seism_gt_boundaries(labels: np.ndarray) -> np.ndarray:
    """SEISM's ground-truth boundaries: :func:`seg2bmap` of the label map, thinned.

    Args:
        labels: Integer ``(H, W)`` label map (PASCAL-Context: the 459-class context labels).

    Returns:
        ``uint8 (H, W)`` in {0, 1}.
    """
    return thin(seg2bmap(labels)).astype(np.uint8)


def seism_pr_counts(
    prob: Tensor,
    target: Tensor,
    max_dist: float,
    thresholds: np.ndarray = SEISM_THRESHOLDS,
    thin_pred: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Per-threshold counts of one image under the SEISM protocol.

    Args:
        prob: Edge probabilities ``(H, W)``; scored as their 8-bit PNG (:func:`png_levels`).
        target: Ground-truth boundaries ``(H, W)``: 1 boundary, 0 not, ``ignore_index``
            unlabelled (predicted pixels there are dropped; SEISM has no such label).
        max_dist: Tolerance as a fraction of the image diagonal.
        thresholds: ``(T,)`` increasing thresholds on ``png / 255``.
        thin_pred: Thin each thresholded map (``edgesEvalImg``'s default).
        ignore_index: Label of unlabelled pixels.

    Returns:
        ``int64 (T, 4)``: ``cntR, sumR, cntP, sumP`` per threshold.
    """
    if prob.shape != target.shape or prob.ndim != 2:
        raise ValueError(
            f"Edge maps must be (H, W) with equal shapes; got prob {tuple(prob.shape)} and "
            f"target {tuple(target.shape)}."
        )
    levels = png_levels(prob)
    target_np = target.detach().cpu().numpy()
    valid = target_np != ignore_index
    order, sizes = nested_threshold_order(levels, level_thresholds(thresholds))
    radius = max_dist * math.hypot(*levels.shape)
    counts = pr_counts_all_thresholds(
        order, sizes, valid & (target_np >= 1), valid, radius, thin_pred
    )
    return torch.from_numpy(counts)


def seism_precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall with SEISM's conventions (``eval_cont``, ``gather_measure``).

    ``sumR == 0``: recall 1, precision 0; else ``sumP == 0``: recall 0, precision 1; else
    ``cntR / sumR`` and ``cntP / sumP``.

    Args:
        counts: ``(..., 4)`` ``cntR, sumR, cntP, sumP``.

    Returns:
        ``(precision, recall)``, each of shape ``counts.shape[:-1]``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    cnt_r, sum_r, cnt_p, sum_p = np.moveaxis(counts, -1, 0)
    recall = np.where(sum_r == 0, 1.0, np.where(sum_p == 0, 0.0, cnt_r / np.maximum(sum_r, 1)))
    precision = np.where(sum_r == 0, 0.0, np.where(sum_p == 0, 1.0, cnt_p / np.maximum(sum_p, 1)))
    return precision, recall


def seism_ods(counts: np.ndarray) -> float:
    """ODS F: the maximum over thresholds of F of the dataset-summed counts (no interpolation).

    Args:
        counts: ``(T, 4)`` counts summed over images.

    Returns:
        ODS F as a fraction.
    """
    return float(f_measure(*seism_precision_recall(counts)).max())
