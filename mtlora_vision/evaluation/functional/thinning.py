"""Morphological thinning of binary maps (Guo and Hall, Comm. ACM 1989), as BSDS applies it.

MATLAB's ``bwmorph(bw, 'thin', inf)`` and scikit-image's ``thin`` implement the two-subiteration
parallel algorithm of Guo and Hall (described in Lam, Lee and Suen, TPAMI 1992). This version
evaluates the deletion rules only at foreground pixels, so its cost follows the number of
boundary pixels rather than the image area; the result equals ``skimage.morphology.thin``.

With the neighbours of ``p`` numbered ``x1`` (east) to ``x8`` (south-east) counter-clockwise,
``p`` is deleted in a subiteration when

* G1: ``X_H(p) = 1``, the number of ``i`` in 1..4 with ``x_{2i-1} = 0`` and
  ``(x_{2i} = 1 or x_{2i+1} = 1)`` (``x9 = x1``);
* G2: ``2 <= min(n1, n2) <= 3`` with ``n1 = sum_k (x_{2k-1} or x_{2k})`` and
  ``n2 = sum_k (x_{2k} or x_{2k+1})``;
* G3 (first subiteration): ``(x2 or x3 or not x8) and x1 == 0``; G3' (second):
  ``(x6 or x7 or not x4) and x5 == 0``.

Deletions within a subiteration are simultaneous; iterations repeat until nothing changes.
"""

from __future__ import annotations

import numpy as np


def _deletion_tables() -> tuple[np.ndarray, np.ndarray]:
    """Boolean look-up tables over the 256 neighbourhood codes (bit ``k - 1`` holds ``x_k``)."""
    codes = np.arange(256)
    x = [None, *(((codes >> (k - 1)) & 1).astype(bool) for k in range(1, 9))]
    x.append(x[1])  # x9 = x1
    crossing = sum((~x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1]) for i in range(1, 5))
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    low = np.minimum(n1, n2)
    common = (crossing == 1) & (low >= 2) & (low <= 3)
    first = common & ~((x[2] | x[3] | ~x[8]) & x[1])
    second = common & ~((x[6] | x[7] | ~x[4]) & x[5])
    return first, second


#: Deletion look-up tables of the two subiterations, indexed by the 8-neighbour code.
FIRST_SUBITERATION, SECOND_SUBITERATION = _deletion_tables()


def thin_binary(bmap: np.ndarray) -> np.ndarray:
    """Thin a binary map to one-pixel-wide curves (``bwmorph(bmap, 'thin', inf)``).

    Args:
        bmap: ``(H, W)`` map, non-zero is foreground.

    Returns:
        Boolean ``(H, W)`` thinned map.
    """
    height, width = bmap.shape
    stride = width + 2
    padded = np.zeros((height + 2, width + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = bmap != 0
    flat = padded.reshape(-1)
    # Flat offsets of x1..x8: E, NE, N, NW, W, SW, S, SE.
    offsets = (1, 1 - stride, -stride, -1 - stride, -1, stride - 1, stride, stride + 1)
    # The foreground only shrinks, so candidates are filtered each pass, never rescanned.
    index = np.flatnonzero(flat)
    changed = True
    while changed:
        changed = False
        for table in (FIRST_SUBITERATION, SECOND_SUBITERATION):
            index = index[flat[index] != 0]
            code = np.zeros(index.size, dtype=np.int64)
            for bit, offset in enumerate(offsets):
                code |= flat[index + offset].astype(np.int64) << bit
            delete = index[table[code]]
            if delete.size:
                flat[delete] = 0
                changed = True
    return padded[1:-1, 1:-1].astype(bool)
