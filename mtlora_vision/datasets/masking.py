"""Fast masked fills of ``float32`` maps (the ignore markers of normals and depth).

``np.where`` and ``np.copyto(..., where=mask)`` cost about a millisecond on a 375x500x3 map, and
broadcasting an ``(H, W, 1)`` mask over channels runs NumPy's inner loop three elements at a time.
OpenCV's masked copy applies one ``(H, W)`` mask to all channels in a single pass; it writes the
same values, so the result is bit-identical.
"""

from __future__ import annotations

import cv2
import numpy as np

_MAX_CV_CHANNELS = 4


def fill_where_invalid(values: np.ndarray, valid: np.ndarray, fill: float) -> np.ndarray:
    """Set ``values`` to ``fill`` wherever ``valid`` is False, in place.

    Args:
        values: ``float32 (H, W)`` or ``(H, W, C)``; for channel-first maps fill each plane.
        valid: ``bool (H, W)``.
        fill: Value written at invalid pixels (on every channel).

    Returns:
        ``values``.

    Raises:
        TypeError: If ``values`` is not ``float32``.
        ValueError: If ``valid`` is not the ``(H, W)`` of ``values``.
    """
    if values.dtype != np.float32:
        raise TypeError(f"fill_where_invalid needs a float32 array, got {values.dtype}.")
    if valid.shape != values.shape[:2] or values.ndim not in (2, 3):
        raise ValueError(
            f"valid mask of shape {valid.shape} does not match values of shape {values.shape}."
        )
    invalid = np.logical_not(valid).view(np.uint8)
    channels = 1 if values.ndim == 2 else values.shape[2]
    if values.flags.c_contiguous and channels <= _MAX_CV_CHANNELS:
        out = cv2.copyTo(np.full(values.shape, fill, np.float32), invalid, values)
        if np.shares_memory(out, values):  # OpenCV wrote into ``values`` itself
            return values
    # Fallback for strided arrays: select between the bit patterns with integer masks.
    keep = np.subtract(invalid, 1, dtype=np.uint32)  # all 32 bits set where valid, none elsewhere
    if values.ndim == 3:
        keep = keep[..., None]
    bits = values.view(np.uint32)
    bits &= keep
    bits |= np.bitwise_and(np.invert(keep), np.float32(fill).view(np.uint32))
    return values
