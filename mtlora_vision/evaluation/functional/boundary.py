"""The BSDS edge protocol: boundary precision/recall counts, ODS, OIS and AP (numpy, scipy, numba).

Used for the edge task of multi-task PASCAL-Context and NYUD-v2 (ASTMT / MTI-Net line, whose
numbers come from the SEISM MATLAB package built on the BSDS benchmark of Martin, Fowlkes and
Malik, TPAMI 2004). The MTLoRA reference code (Agiza et al., CVPR 2024) reports no edge F-measure.

Protocol here, per image and per threshold ``t``:

1. ``bmap = prob >= t`` with ``T`` thresholds ``linspace(1/(T+1), 1 - 1/(T+1), T)``
   (BSDS ``nthresh``; 99 by default, i.e. 0.01 ... 0.99).
2. ``bmap`` is thinned to one-pixel-wide curves (Guo-Hall, as MATLAB's ``bwmorph(bmap, 'thin',
   inf)``; see :mod:`~mtlora_vision.evaluation.functional.thinning`), then predicted pixels on
   ground truth labelled ``IGNORE_INDEX`` are dropped.
3. Predicted and ground-truth boundary pixels are matched one-to-one, a pair being allowed when
   their Euclidean distance is at most ``max_dist * sqrt(H**2 + W**2)`` pixels (``max_dist``
   0.0075 for PASCAL-Context, 0.011 for NYUD-v2, ``H, W`` the size of the evaluated map).
4. Counts ``cntR`` (matched ground-truth pixels), ``sumR`` (ground-truth pixels), ``cntP``
   (matched predicted pixels), ``sumP`` (predicted pixels) are summed over the dataset; then
   ``R = cntR / sumR``, ``P = cntP / sumP`` (0 when the denominator is 0), ``F = 2PR / (P + R)``.
   ODS is the maximum F over thresholds, searched like BSDS's ``collect_eval_bdry``: P and R are
   linearly interpolated at 100 points between consecutive thresholds.

How this matches or differs from SEISM / BSDS:

* Assignment: ``correspondPixels`` solves a minimum-cost assignment with Goldberg's CSA on a sparse
  graph (pair cost = distance, each pixel also linked to a few random outlier nodes at cost
  ``100 * maxDist``); matched pixels are those not assigned to an outlier. Here the assignment is
  a **maximum-cardinality** bipartite matching over all pairs within the tolerance (a
  unit-capacity maximum flow, Dinic's algorithm in ``scipy.sparse.csgraph.maximum_flow``).
  Distances only decide which pairs are allowed, never which is preferred. Counts equal CSA's
  whenever CSA finds a maximum matching (its high outlier cost pushes it there), and are never
  below it; they can be slightly higher where CSA's sparse outlier graph or cost trade-off
  leaves a matchable pixel out.
* Tolerance: the same fraction of the image diagonal; a pair is allowed at distance <= radius.
* Thresholds: the same BSDS grid and ``>=``; the number is configurable.
* Thinning: applied to the thresholded prediction as BSDS ``thinpb=1`` does; the ground truth is
  used as is (PASCAL edges are already one pixel wide). No non-maximum suppression is applied
  to the predictions; apply it beforehand where the protocol being matched does.
* Borders: no cropping or padding of the image border; the image edge simply bounds the
  neighbourhood. Predicted pixels on ``IGNORE_INDEX`` ground truth are removed (SEISM has no
  ignore label); those ground-truth pixels are not boundaries.
* One ground truth per image (BSDS accumulates matches over several annotators; PASCAL-Context and
  NYUD-v2 edges have one).
* OIS (:func:`ois_f`) and AP (:func:`average_precision`) as ``collect_eval_bdry`` computes them.

The counts of all thresholds of one image come from one compiled pass
(:mod:`~mtlora_vision.evaluation.functional.edge_kernels`); :func:`count_matches` (a maximum flow)
is the independent path the tests compare it with. The SEISM protocol of the published numbers is
in :mod:`~mtlora_vision.evaluation.functional.seism`; ``docs/edge_evaluation.md`` compares both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow
from scipy.spatial import cKDTree
from torch import Tensor

from mtlora_vision.evaluation.functional.edge_kernels import pr_counts_all_thresholds
from mtlora_vision.tasks import IGNORE_INDEX

#: Boundary tolerance as a fraction of the image diagonal, per dataset (SEISM settings).
MAX_DIST: dict[str, float] = {"pascal_context": 0.0075, "nyud": 0.011}

#: Steps of the linear interpolation between consecutive thresholds (BSDS ``linspace(0, 1)``).
_INTERP_STEPS = 100


def boundary_thresholds(num_thresholds: int = 99) -> Tensor:
    """The BSDS threshold grid.

    Args:
        num_thresholds: Number of thresholds ``T``.

    Returns:
        ``float64 (T,)``: ``linspace(1/(T+1), 1 - 1/(T+1), T)``.

    Raises:
        ValueError: If ``num_thresholds < 1``.
    """
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds={num_thresholds} must be >= 1.")
    step = 1.0 / (num_thresholds + 1)
    return torch.linspace(step, 1.0 - step, num_thresholds, dtype=torch.float64)


def count_matches(pred_bmap: np.ndarray, gt_bmap: np.ndarray, radius: float) -> int:
    """Size of a maximum one-to-one matching between two sets of boundary pixels.

    Args:
        pred_bmap: Boolean ``(H, W)`` predicted boundary pixels.
        gt_bmap: Boolean ``(H, W)`` ground-truth boundary pixels.
        radius: Largest allowed Euclidean distance of a matched pair, in pixels.

    Returns:
        Number of matched pairs (each pixel is used at most once).
    """
    gt_points = np.argwhere(gt_bmap)
    if gt_points.size == 0:
        return 0
    return _count_matches(np.argwhere(pred_bmap), cKDTree(gt_points), radius)


def _count_matches(pred_points: np.ndarray, gt_tree: cKDTree, radius: float) -> int:
    if pred_points.size == 0:
        return 0
    pairs = cKDTree(pred_points).sparse_distance_matrix(gt_tree, radius, output_type="ndarray")
    if pairs.size == 0:
        return 0
    # Unit-capacity network source -> predicted -> ground truth -> sink; its maximum flow is the
    # maximum matching. Dinic's algorithm stays fast on these geometric graphs, where scipy's
    # Hopcroft-Karp (maximum_bipartite_matching) took seconds on some 448x448 maps.
    n_pred, n_gt = len(pred_points), gt_tree.n
    sink = n_pred + n_gt + 1
    pred_ids, gt_ids = 1 + np.arange(n_pred), 1 + n_pred + np.arange(n_gt)
    rows = np.concatenate([np.zeros(n_pred, np.int64), 1 + pairs["i"], gt_ids])
    cols = np.concatenate([pred_ids, 1 + n_pred + pairs["j"], np.full(n_gt, sink)])
    network = csr_array(
        (np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(sink + 1, sink + 1)
    )
    return int(maximum_flow(network, 0, sink, method="dinic").flow_value)


def boundary_pr_counts(
    prob: Tensor,
    target: Tensor,
    max_dist: float = MAX_DIST["pascal_context"],
    thresholds: Tensor | None = None,
    thin_pred: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Per-threshold boundary match counts of one image.

    Args:
        prob: Edge probabilities ``(H, W)`` in ``[0, 1]``.
        target: Edge labels ``(H, W)``: 1 edge, 0 not, ``ignore_index`` unlabelled.
        max_dist: Tolerance as a fraction of the image diagonal.
        thresholds: ``(T,)`` increasing thresholds; defaults to :func:`boundary_thresholds`.
        thin_pred: Thin each thresholded prediction (BSDS ``thinpb``).
        ignore_index: Label of unlabelled pixels.

    Returns:
        ``int64 (T, 4)``: ``cntR, sumR, cntP, sumP`` per threshold.

    Raises:
        ValueError: If shapes differ or are not 2-D.
    """
    if prob.shape != target.shape or prob.ndim != 2:
        raise ValueError(
            f"Edge maps must be (H, W) with equal shapes; got prob {tuple(prob.shape)} and "
            f"target {tuple(target.shape)}."
        )
    thresholds = boundary_thresholds() if thresholds is None else thresholds.to(torch.float64)
    prob_np = prob.detach().to("cpu", torch.float64).numpy()
    target_np = target.detach().cpu().numpy()
    valid = target_np != ignore_index
    order, sizes = nested_threshold_order(prob_np, thresholds.numpy())
    radius = max_dist * math.hypot(*prob_np.shape)
    counts = pr_counts_all_thresholds(
        order, sizes, valid & (target_np >= 1), valid, radius, thin_pred
    )
    return torch.from_numpy(counts)


def nested_threshold_order(
    score: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every map ``score >= t_k`` as a prefix of one ordering of the pixels.

    Args:
        score: ``(H, W)`` scores (any real dtype).
        thresholds: ``(T,)`` increasing thresholds, compared in the dtype of ``score``'s values
            promoted with theirs.

    Returns:
        ``order``: ``int64 (H*W,)`` flat indices sorted by score, highest first; ``sizes``:
        ``int64 (T,)`` with ``sizes[k] = #{score >= t_k}``, so the map of ``t_k`` is
        ``order[:sizes[k]]``.
    """
    flat = score.reshape(-1)
    ascending = np.argsort(flat, kind="stable")
    sorted_scores = flat[ascending]
    sizes = flat.size - np.searchsorted(sorted_scores, thresholds, side="left")
    return ascending[::-1].astype(np.int64), sizes.astype(np.int64)


def f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F = 2PR / (P + R) elementwise, 0 where P + R = 0."""
    denom = precision + recall
    return 2.0 * precision * recall / np.where(denom > 0, denom, 1.0)


def ods_f(counts: Tensor, interpolate: bool = True) -> float:
    """Optimal-dataset-scale F-measure from dataset-summed counts.

    Args:
        counts: ``(T, 4)`` ``cntR, sumR, cntP, sumP`` summed over images (thresholds increasing).
        interpolate: Search between thresholds with BSDS's linear interpolation of P and R.

    Returns:
        ODS F as a fraction.
    """
    cnt_r, sum_r, cnt_p, sum_p = counts.to(torch.float64).numpy().T
    recall = cnt_r / np.where(sum_r > 0, sum_r, 1.0)
    precision = cnt_p / np.where(sum_p > 0, sum_p, 1.0)
    best = float(f_measure(precision, recall).max())
    if interpolate and len(recall) > 1:
        step = np.linspace(0.0, 1.0, _INTERP_STEPS)[None, :]  # (1, S)
        r = recall[1:, None] * step + recall[:-1, None] * (1.0 - step)  # (T-1, S)
        p = precision[1:, None] * step + precision[:-1, None] * (1.0 - step)
        best = max(best, float(f_measure(p, r).max()))
    return best


def bsds_precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BSDS's precision and recall: ``cnt / sum``, 0 where ``sum`` is 0.

    Args:
        counts: ``(..., 4)`` ``cntR, sumR, cntP, sumP``.

    Returns:
        ``(precision, recall)``, each of shape ``counts.shape[:-1]``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    cnt_r, sum_r, cnt_p, sum_p = np.moveaxis(counts, -1, 0)
    return cnt_p / np.where(sum_p > 0, sum_p, 1.0), cnt_r / np.where(sum_r > 0, sum_r, 1.0)


def ois_f(
    per_image: np.ndarray,
    precision_recall: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] = bsds_precision_recall,
) -> float:
    """Optimal-image-scale F: each image at its own best threshold, counts summed.

    Args:
        per_image: ``(N, T, 4)`` counts of each image at each threshold.
        precision_recall: The protocol's ``counts -> (P, R)``.

    Returns:
        F of the counts summed over images, each image taken at the first threshold with its
        highest F (BSDS ``collect_eval_bdry``, SEISM ``general_ois``).
    """
    per_image = np.asarray(per_image, dtype=np.float64)
    if per_image.ndim != 3 or per_image.shape[-1] != 4:
        raise ValueError(f"per_image must be (N, T, 4), got {per_image.shape}.")
    precision, recall = precision_recall(per_image)
    best = f_measure(precision, recall).argmax(axis=1)  # first maximum, as MATLAB's max
    chosen = per_image[np.arange(len(per_image)), best].sum(axis=0)
    p, r = precision_recall(chosen)
    return float(f_measure(np.asarray(p), np.asarray(r)))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the dataset precision-recall curve, as BSDS and SEISM compute it.

    Recall values are made unique (the first threshold of each value kept, MATLAB's ``unique``),
    precision is interpolated linearly at recall ``0, 0.01, ..., 1`` and the points inside the
    recall range are summed times 0.01 (``collect_eval_bdry``'s and ``general_ap``'s formula).

    Args:
        precision: ``(T,)`` dataset precision per threshold.
        recall: ``(T,)`` dataset recall per threshold.

    Returns:
        AP as a fraction; 0 when fewer than two distinct recall values exist.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    unique_recall, first = np.unique(recall, return_index=True)
    if unique_recall.size < 2:
        return 0.0
    grid = np.arange(101) / 100.0
    inside = (grid >= unique_recall[0]) & (grid <= unique_recall[-1])
    values = np.interp(grid[inside], unique_recall, precision[first])
    return float(values.sum() / 100.0)
