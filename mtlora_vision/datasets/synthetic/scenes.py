"""Pure helpers to render learnable synthetic scenes: textures, shading, normals from height fields.

Pixels are tied to labels so that a small network can learn every task: each class has its own
colour and stripe texture, and shading from a fixed light makes the surface orientation visible.
Normals use this package's axes (x right, y down, z towards the camera; see ``normals.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Direction towards the light (x right, y down, z towards the camera): from the upper left front.
LIGHT = np.array([-0.45, -0.55, 0.70]) / np.linalg.norm([-0.45, -0.55, 0.70])


def class_texture(
    shape: tuple[int, int], class_key: int, rng: np.random.Generator, amplitude: float = 0.18
) -> np.ndarray:
    """Multiplicative stripe texture in ``[1 - amplitude, 1 + amplitude]``.

    Its period and angle depend on the class; its phase is random.

    Returns:
        ``float32 (H, W)``.
    """
    h, w = shape
    period = 4.0 + (class_key * 7) % 11
    angle = np.deg2rad((class_key * 37) % 180)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period) + phase)
    return (1.0 + amplitude * wave).astype(np.float32)


def normals_from_height(height: np.ndarray, blur_sigma: float = 1.5) -> np.ndarray:
    """Unit normals of a height field ``z = h(x, y)`` that rises towards the camera.

    Args:
        height: ``(H, W)`` heights in pixel units.
        blur_sigma: Gaussian smoothing before differentiation (0 disables).

    Returns:
        ``float32 (H, W, 3)``: ``(-dh/dx, -dh/dy, 1)`` normalised.
    """
    h = height.astype(np.float32)
    if blur_sigma > 0:
        h = cv2.GaussianBlur(h, (0, 0), blur_sigma)
    dh_dy, dh_dx = np.gradient(h)
    normals = np.stack([-dh_dx, -dh_dy, np.ones_like(h)], axis=-1)
    return (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)


def shade(
    albedo: np.ndarray,
    normals: np.ndarray,
    rng: np.random.Generator,
    ambient: float = 0.4,
    noise_std: float = 3.0,
) -> np.ndarray:
    """Lambertian shading of an albedo image plus Gaussian noise.

    Args:
        albedo: ``float (H, W, 3)`` colours on the 0..255 scale.
        normals: ``float (H, W, 3)`` unit normals (zero vectors get ambient light only).
        rng: Noise source.
        ambient: Light reaching surfaces facing away from the light.
        noise_std: Standard deviation of the pixel noise.

    Returns:
        ``uint8 (H, W, 3)``.
    """
    lambert = np.clip(normals @ LIGHT, 0.0, 1.0)[..., None]
    image = albedo * (ambient + (1.0 - ambient) * lambert)
    image = image + rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_normals_png(normals: np.ndarray) -> np.ndarray:
    """Inverse of ``decode_normals_png``: ``v = round((n + 1) * 255 / 2)``.

    Returns:
        ``uint8 (H, W, 3)`` in the channel order x, y, z.
    """
    return np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)


def ellipse_mask(
    shape: tuple[int, int], center: Sequence[float], axes: Sequence[float], angle: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Filled ellipse and its dome profile ``sqrt(1 - r^2)`` (0 outside).

    Args:
        shape: ``(H, W)``.
        center: ``(x, y)`` in pixels.
        axes: Semi-axes ``(a, b)`` in pixels.
        angle: Rotation in degrees.

    Returns:
        ``bool (H, W)`` mask and ``float32 (H, W)`` profile in [0, 1].
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.deg2rad(angle)
    dx, dy = xx - center[0], yy - center[1]
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / max(axes[0], 0.5)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / max(axes[1], 0.5)
    r2 = u * u + v * v
    return r2 <= 1.0, np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)).astype(np.float32)


def polygon_mask(shape: tuple[int, int], points: Sequence[Sequence[float]]) -> np.ndarray:
    """Filled polygon ``bool (H, W)`` from ``(x, y)`` vertices in pixels."""
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)], 1)
    return mask.astype(bool)


def limb_polygon(
    start: Sequence[float], end: Sequence[float], width: float
) -> list[tuple[float, float]]:
    """Rectangle of ``width`` pixels around the segment ``start -> end`` (``(x, y)`` points)."""
    (x0, y0), (x1, y1) = start, end
    length = max(np.hypot(x1 - x0, y1 - y0), 1e-6)
    nx, ny = -(y1 - y0) / length * width / 2, (x1 - x0) / length * width / 2
    return [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)]


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label (``bool (H, W)``)."""
    padded = np.pad(labels, 1, mode="edge")
    center = padded[1:-1, 1:-1]
    return (
        (padded[:-2, 1:-1] != center)
        | (padded[2:, 1:-1] != center)
        | (padded[1:-1, :-2] != center)
        | (padded[1:-1, 2:] != center)
    )
