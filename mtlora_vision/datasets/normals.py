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

from mtlora_vision.tasks import IGNORE_INDEX

_EPS = 1e-6


def flip_normals_x(normals: np.ndarray) -> np.ndarray:
    """Negate the x component, as a horizontal image flip requires.

    Args:
        normals: ``float32 (3, H, W)`` (already spatially flipped).

    Returns:
        A new ``float32 (3, H, W)``.
    """
    out = normals.astype(np.float32, copy=True)
    np.negative(out[0], out=out[0])
    return out


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


def rotate_normals(normals: np.ndarray, rotation: np.ndarray, y_down: bool = True) -> np.ndarray:
    """Rotate the in-plane (x, y) components of normals the way the image was rotated.

    Args:
        normals: ``float32 (3, H, W)``.
        rotation: ``(2, 2)`` rotation of image-plane directions in pixel coordinates (x right,
            y down), e.g. from :func:`rotation_from_affine`.
        y_down: Whether the stored y component points down the image (this package's convention);
            pass False for releases whose y axis points up.

    Returns:
        A new ``float32 (3, H, W)``; z is unchanged.
    """
    rot = np.asarray(rotation, dtype=np.float64)
    if not y_down:
        flip_y = np.diag([1.0, -1.0])
        rot = flip_y @ rot @ flip_y
    r00, r01, r10, r11 = (np.float32(v) for v in rot.ravel())
    x, y = normals[0], normals[1]
    return np.stack([r00 * x + r01 * y, r10 * x + r11 * y, normals[2]]).astype(
        np.float32, copy=False
    )


def finalize_normals(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Renormalise to unit length and mark invalid pixels with 255.0 on all channels.

    Args:
        normals: ``float32 (3, H, W)``, anything finite where invalid.
        valid: ``bool (H, W)``; pixels whose vector has (near) zero length also become invalid.

    Returns:
        ``float32 (3, H, W)``.
    """
    x, y, z = normals[0], normals[1], normals[2]
    norm = np.sqrt(x * x + y * y + z * z)
    keep = valid & (norm > _EPS)
    inv = np.where(keep, np.float32(1.0) / np.maximum(norm, np.float32(_EPS)), np.float32(0.0))
    out = normals * inv
    return np.where(keep, out, np.float32(IGNORE_INDEX)).astype(np.float32, copy=False)
