"""Geometric fix-ups of surface-normal maps under image flips and in-plane rotations.

Axis convention: the stored (x, y) components follow the image axes, x to the right and y down
(z towards the camera), which is the convention under which the official ScaleNRotate of
ASTMT/MTI-Net/MTLoRA rotates normals consistently with ``cv2.warpAffine``: it maps
``(x, y) -> (x cos a + y sin a, -x sin a + y cos a)`` for an image rotated by ``a`` degrees
counter-clockwise on screen, which is the linear part of OpenCV's forward rotation matrix.

Since rotating vectors is linear per pixel, it commutes with any spatial interpolation of the map,
so the fix-ups can be applied after the image has been warped.
"""

from __future__ import annotations

import numpy as np

from mtlora_vision.datasets.masking import fill_where_invalid
from mtlora_vision.tasks import IGNORE_INDEX

_EPS = 1e-6


def rotation_from_affine(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """Split the linear part of a forward affine map into a rotation and an isotropic scale.

    Args:
        matrix: ``(2, 3)`` or ``(3, 3)`` forward map in pixel coordinates (x right, y down), as
            used by ``cv2.warpAffine`` and saved by albumentations' ``Affine``.

    Returns:
        ``(rotation (2, 2), scale)`` with ``linear = scale * rotation``.

    Raises:
        ValueError: If the linear part is singular or reflecting.
    """
    linear = np.asarray(matrix, dtype=np.float64)[:2, :2]
    det = float(np.linalg.det(linear))
    if det <= 0:
        raise ValueError(
            f"Affine map {linear.tolist()} is singular or mirrors; cannot rotate normals."
        )
    scale = det**0.5
    return linear / scale, scale


def rotate_normals(normals: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Rotate the in-plane (x, y) components of normals the way the image was rotated.

    Args:
        normals: ``float32 (3, H, W)``.
        rotation: ``(2, 2)`` rotation of image-plane directions in pixel coordinates (x right,
            y down), e.g. from :func:`rotation_from_affine`.

    Returns:
        A new ``float32 (3, H, W)``; z is unchanged.
    """
    rot = np.asarray(rotation, dtype=np.float64)
    r00, r01, r10, r11 = (np.float32(v) for v in rot.ravel())
    x, y = normals[0], normals[1]
    # In-place float32 arithmetic, in the order of ``r00 * x + r01 * y`` (bit-identical, fewer
    # temporaries).
    out = np.empty(normals.shape, np.float32)
    scratch = np.empty(normals.shape[1:], np.float32)
    for row, (a, b) in enumerate(((r00, r01), (r10, r11))):
        np.multiply(x, a, out=out[row])
        np.multiply(y, b, out=scratch)
        np.add(out[row], scratch, out=out[row])
    out[2] = normals[2]
    return out


def finalize_normals(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Renormalise to unit length and mark invalid pixels with 255.0 on all channels.

    Args:
        normals: ``float32 (3, H, W)``, anything finite where invalid.
        valid: ``bool (H, W)``; pixels whose vector has (near) zero length also become invalid.

    Returns:
        ``float32 (3, H, W)``.
    """
    x, y, z = normals[0], normals[1], normals[2]
    # sqrt(x * x + y * y + z * z), then 1 / max(norm, eps), in float32 with in-place operations.
    norm = np.multiply(x, x, dtype=np.float32)
    scratch = np.multiply(y, y, dtype=np.float32)
    np.add(norm, scratch, out=norm)
    np.multiply(z, z, out=scratch)
    np.add(norm, scratch, out=norm)
    np.sqrt(norm, out=norm)
    keep = norm > _EPS
    keep &= valid
    np.maximum(norm, np.float32(_EPS), out=norm)
    inv = np.divide(np.float32(1.0), norm, out=norm)
    out = np.multiply(normals, inv, dtype=np.float32, order="C")
    for plane in out:
        fill_where_invalid(plane, keep, IGNORE_INDEX)
    return out
