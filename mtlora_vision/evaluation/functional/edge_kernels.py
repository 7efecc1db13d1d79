"""Compiled per-image kernel of the edge benchmarks: all thresholds of one image in one pass.

For thresholds ``t_1 < ... < t_T`` the binary maps ``score >= t_k`` are nested, so one sort of the
pixels by score gives every map as a prefix of the sorted order (no full-image pass per
threshold). Each map is thinned (Guo-Hall, the look-up tables of
:mod:`~mtlora_vision.evaluation.functional.thinning`) and matched one-to-one with the ground-truth
boundary pixels within the tolerance radius. The matching of threshold ``k`` starts from the
matching of threshold ``k - 1`` restricted to the pixels that survive, then grows by augmenting
paths until none is left (Berge), so it is a maximum matching, the same count as the maximum
flow of :func:`~mtlora_vision.evaluation.functional.boundary.count_matches`; only the work of
finding it is shared between thresholds.

Compiled with numba (BSD-2-Clause). Which pixels end up matched depends on the search order, but
the size of a maximum matching does not, and only sizes are returned: the counts equal those of
thinning with :func:`~mtlora_vision.evaluation.functional.thinning.thin_binary` and matching with
``count_matches`` at each threshold separately (``tests/test_evaluation_seism.py``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numba import njit

from mtlora_vision.evaluation.functional.thinning import FIRST_SUBITERATION, SECOND_SUBITERATION


def disk_offsets(radius: float) -> np.ndarray:
    """Integer ``(dy, dx)`` offsets with ``dy**2 + dx**2 <= radius**2``, nearest first.

    Args:
        radius: Tolerance in pixels.

    Returns:
        ``int64 (K, 2)``.
    """
    reach = math.floor(radius)
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    dist2 = dy**2 + dx**2
    keep = dist2 <= radius * radius
    order = np.argsort(dist2[keep], kind="stable")
    return np.stack([dy[keep][order], dx[keep][order]], axis=1).astype(np.int64)


def pr_counts_all_thresholds(
    order: np.ndarray,
    sizes: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    radius: float,
    thin: bool,
) -> np.ndarray:
    """``cntR, sumR, cntP, sumP`` of one image at every threshold.

    Args:
        order: ``int64 (N,)`` flat indices (row-major in ``(H, W)``) of pixels sorted by score,
            highest first.
        sizes: ``int64 (T,)`` non-increasing: threshold ``k`` keeps ``order[:sizes[k]]``.
        gt: Boolean ``(H, W)`` ground-truth boundary pixels.
        valid: Boolean ``(H, W)``; predicted pixels outside it are dropped after thinning.
        radius: Tolerance in pixels (a pair matches at distance ``<= radius``).
        thin: Thin each thresholded map before matching.

    Returns:
        ``int64 (T, 4)``; ``cntR == cntP`` (one ground truth per image).
    """
    height, width = gt.shape
    pad = max(1, math.floor(radius))
    stride = width + 2 * pad
    offsets = disk_offsets(radius)
    flat_offsets = offsets[:, 0] * stride + offsets[:, 1]
    neighbours8 = np.array(
        [1, 1 - stride, -stride, -1 - stride, -1, stride - 1, stride, stride + 1], dtype=np.int64
    )
    gt_ids = np.full(gt.size, -1, dtype=np.int64)
    gt_points = np.flatnonzero(gt.reshape(-1))
    gt_ids[gt_points] = np.arange(gt_points.size)
    gt_index = np.full((height + 2 * pad, stride), -1, dtype=np.int64)
    gt_index[pad : pad + height, pad : pad + width] = gt_ids.reshape(height, width)
    # Pixels with a ground-truth pixel in reach: the only ones that can ever be matched.
    reach = offsets.max(initial=0)
    disk = np.zeros((2 * reach + 1, 2 * reach + 1), dtype=np.uint8)
    disk[offsets[:, 0] + reach, offsets[:, 1] + reach] = 1
    near = cv2.dilate(gt.astype(np.uint8), disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    flags = np.zeros((height + 2 * pad, stride), dtype=np.uint8)  # bit 0 valid, bit 1 near
    flags[pad : pad + height, pad : pad + width] = np.asarray(valid, dtype=np.uint8) * (
        1 + 2 * (near > 0)
    )
    rows, cols = np.divmod(np.asarray(order, dtype=np.int64), width)
    padded_order = (rows + pad) * stride + cols + pad
    counts = _counts(
        padded_order,
        np.asarray(sizes, dtype=np.int64),
        gt_index.reshape(-1),
        int(gt_points.size),
        flags.reshape(-1),
        flat_offsets,
        neighbours8,
        FIRST_SUBITERATION,
        SECOND_SUBITERATION,
        bool(thin),
    )
    return counts


@njit(cache=True, nogil=True)
def _thin(image, points, n, neighbours, first, second, border, dirty):  # noqa: C901
    """Guo-Hall thinning of the foreground ``points[:n]`` of ``image`` in place.

    A pixel is examined under a subiteration's table only while it is "dirty" for that table:
    at first when it has a background 4-neighbour (a pixel whose 4-neighbours are all foreground
    has crossing number 0 and is never deleted), later when a neighbour was deleted since it was
    last examined under that table (its decision depends on its neighbourhood only). The cost
    follows the area swept, not area times iterations.

    Returns the number of points left; ``points[:returned]`` are the surviving pixels.
    """
    n_border = 0
    for i in range(n):
        p = points[i]
        for bit in range(0, 8, 2):  # E, N, W, S: with all four set, the crossing number is 0
            if image[p + neighbours[bit]] == 0:
                border[n_border] = p
                n_border += 1
                dirty[p] = 3
                break
    deleted = np.empty(max(n_border, 1), dtype=np.int64)
    quiet = 0  # consecutive subiterations without a deletion
    sub = 0
    while quiet < 2 and n_border > 0:
        table = first if sub == 0 else second
        mask = 1 << sub
        if deleted.size < n_border:
            deleted = np.empty(n_border, dtype=np.int64)
        m = 0
        for i in range(n_border):
            p = border[i]
            if dirty[p] & mask == 0:
                continue
            code = 0
            for bit in range(8):
                if image[p + neighbours[bit]] != 0:
                    code |= 1 << bit
            if table[code]:
                deleted[m] = p
                m += 1
            else:
                dirty[p] &= ~mask
        for i in range(m):
            image[deleted[i]] = 0
            dirty[deleted[i]] = 0
        kept = 0
        for i in range(n_border):
            if dirty[border[i]] != 0:
                border[kept] = border[i]
                kept += 1
        n_border = kept
        for i in range(m):
            for bit in range(8):
                q = deleted[i] + neighbours[bit]
                if image[q] != 0:
                    if dirty[q] == 0:
                        border[n_border] = q
                        n_border += 1
                    dirty[q] = 3
        quiet = 0 if m > 0 else quiet + 1
        sub = 1 - sub
    for i in range(n_border):
        dirty[border[i]] = 0
    kept = 0
    for i in range(n):
        if image[points[i]] != 0:
            points[kept] = points[i]
            kept += 1
    return kept


@njit(cache=True, nogil=True)
def _augment(root, gt_index, offsets, match_pix, match_gt, seen, stamp, stack_p, stack_o, via):
    """Search an augmenting path from the free predicted pixel ``root``; flip it if found."""
    n_off = offsets.size
    stack_p[0] = root
    stack_o[0] = 0
    depth = 1
    while depth > 0:
        p = stack_p[depth - 1]
        o = stack_o[depth - 1]
        advanced = False
        while o < n_off:
            g = gt_index[p + offsets[o]]
            o += 1
            if g < 0 or seen[g] == stamp:
                continue
            seen[g] = stamp
            via[depth - 1] = g
            q = match_gt[g]
            if q < 0:
                for d in range(depth - 1, -1, -1):
                    match_gt[via[d]] = stack_p[d]
                    match_pix[stack_p[d]] = via[d]
                return True
            stack_o[depth - 1] = o
            stack_p[depth] = q
            stack_o[depth] = 0
            depth += 1
            advanced = True
            break
        if not advanced:
            depth -= 1
    return False


@njit(cache=True, nogil=True)
def _counts(order, sizes, gt_index, n_gt, flags, offsets, neighbours, first, second, thin):  # noqa: C901
    n_thresholds = sizes.size
    counts = np.zeros((n_thresholds, 4), dtype=np.int64)
    image = np.zeros(gt_index.size, dtype=np.uint8)
    match_pix = np.full(gt_index.size, -1, dtype=np.int64)
    match_gt = np.full(max(n_gt, 1), -1, dtype=np.int64)
    seen = np.zeros(max(n_gt, 1), dtype=np.int64)
    in_map = np.full(gt_index.size, -1, dtype=np.int64)
    n_max = order.size
    points = np.empty(n_max, dtype=np.int64)
    previous = np.empty(n_max, dtype=np.int64)
    border = np.empty(n_max, dtype=np.int64)
    dirty = np.zeros(gt_index.size, dtype=np.uint8)
    stack_p = np.empty(n_max + 1, dtype=np.int64)
    stack_o = np.empty(n_max + 1, dtype=np.int64)
    via = np.empty(n_max + 1, dtype=np.int64)
    n_previous = 0
    matched = 0
    stamp = 0
    last_size = -1
    for k in range(n_thresholds):
        size = sizes[k]
        if size == last_size:  # nested maps of equal size are identical
            counts[k] = counts[k - 1]
            continue
        last_size = size
        for i in range(size):
            points[i] = order[i]
            image[order[i]] = 1
        n = size
        if thin:
            n = _thin(image, points, n, neighbours, first, second, border, dirty)
        for i in range(size):
            image[order[i]] = 0
        kept = 0
        for i in range(n):
            if flags[points[i]] & 1:
                points[kept] = points[i]
                in_map[points[i]] = k
                kept += 1
        n = kept
        # Warm start: keep the previous pairs whose predicted pixel is still in the map.
        for i in range(n_previous):
            p = previous[i]
            if in_map[p] != k and match_pix[p] >= 0:
                match_gt[match_pix[p]] = -1
                match_pix[p] = -1
                matched -= 1
        if n_gt > 0:
            for i in range(n):  # greedy: a free ground-truth pixel in reach, nearest first
                p = points[i]
                if match_pix[p] >= 0 or flags[p] & 2 == 0:
                    continue
                for o in range(offsets.size):
                    g = gt_index[p + offsets[o]]
                    if g >= 0 and match_gt[g] < 0:
                        match_gt[g] = p
                        match_pix[p] = g
                        matched += 1
                        break
            grown = True
            while grown:  # passes of augmenting paths until none exists: a maximum matching
                grown = False
                stamp += 1
                for i in range(n):
                    p = points[i]
                    if (
                        match_pix[p] < 0
                        and flags[p] & 2
                        and _augment(
                            p,
                            gt_index,
                            offsets,
                            match_pix,
                            match_gt,
                            seen,
                            stamp,
                            stack_p,
                            stack_o,
                            via,
                        )
                    ):
                        matched += 1
                        grown = True
        for i in range(n):
            previous[i] = points[i]
        n_previous = n
        counts[k, 0] = matched
        counts[k, 1] = n_gt
        counts[k, 2] = matched
        counts[k, 3] = n
    return counts
