"""Synthetic indoor scenes in the NYUD_MT on-disk layout of MTI-Net.

Folders ``images/``, ``segmentation/``, ``depth/``, ``normals/``, ``edge/`` and ``gt_sets/``.

A pinhole camera looks into a box-shaped room (floor, ceiling, three walls) with furniture boxes
standing on the floor and flat decorations on the back wall. Depth, normals, classes and boundaries
come from one ray cast, and the image is the class albedo shaded by the normals and darkened with
distance, so every label can be read from the pixels. Kinect-like holes (depth 0, zero normals)
and unlabelled patches (label 0) are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import thin

from mtlora_vision.datasets.synthetic.scenes import (
    class_texture,
    ellipse_mask,
    label_boundaries,
    shade,
)

#: NYU40 label (1..40) -> RGB albedo of the classes used.
NYU_COLOURS = {
    1: (200, 195, 185), 2: (140, 100, 70), 22: (235, 235, 228), 3: (120, 80, 50),
    4: (90, 120, 200), 5: (60, 40, 30), 6: (150, 50, 60), 7: (175, 135, 80), 10: (100, 60, 35),
    29: (190, 160, 110), 39: (80, 125, 90), 11: (200, 60, 160), 9: (150, 200, 240),
    30: (245, 245, 250), 25: (25, 25, 30),
}  # fmt: skip

#: Furniture: NYU40 label -> (width, height, depth) ranges in metres.
FURNITURE = {
    3: ((0.5, 1.0), (0.8, 1.8), (0.4, 0.6)),
    4: ((1.0, 1.6), (0.4, 0.6), (1.6, 2.0)),
    5: ((0.4, 0.5), (0.8, 1.0), (0.4, 0.5)),
    6: ((1.4, 2.0), (0.7, 0.9), (0.8, 1.0)),
    7: ((0.8, 1.4), (0.7, 0.8), (0.6, 1.0)),
    10: ((0.6, 1.0), (1.5, 2.0), (0.3, 0.4)),
    29: ((0.3, 0.6), (0.3, 0.5), (0.3, 0.6)),
    39: ((0.4, 0.8), (0.5, 1.2), (0.4, 0.6)),
}
DECORATIONS = (11, 9, 30, 25)
ROOM_HEIGHT = 2.7


@dataclass
class NyudScene:
    """Everything written for one image."""

    image: np.ndarray  # uint8 (H, W, 3)
    semseg: np.ndarray  # uint8 (H, W): 0 unlabelled, 1..40
    depth: np.ndarray  # float32 (H, W) metres, 0 invalid
    normals: np.ndarray  # float32 (H, W, 3) unit, zero where invalid
    edge: np.ndarray  # float32 (H, W) in {0, 1}


class _Hits:
    """Nearest surface per pixel: depth, camera-frame normal, class and surface id."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.depth = np.full(shape, np.inf, np.float32)
        self.normal = np.zeros((*shape, 3), np.float32)
        self.label = np.zeros(shape, np.uint8)
        self.surface = np.zeros(shape, np.int32)
        self.count = 0

    def add(self, t: np.ndarray, normal: np.ndarray, label: int) -> None:
        closer = np.isfinite(t) & (t > 0) & (t < self.depth)
        self.count += 1
        self.depth[closer] = t[closer]
        self.normal[closer] = normal if normal.ndim == 1 else normal[closer]
        self.label[closer] = label
        self.surface[closer] = self.count


def _plane(rays: np.ndarray, axis: int, offset: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / rays[..., axis]
    return np.where(t > 0, t, np.inf).astype(np.float32)


def _box(rays: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays from the origin against an axis-aligned box: depth and entry normal."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = low / rays, high / rays
    t_near_axes = np.minimum(t0, t1)
    t_near = np.nanmax(t_near_axes, axis=-1)
    t_far = np.nanmin(np.maximum(t0, t1), axis=-1)
    hit = (t_near <= t_far) & (t_near > 0)
    axis = np.argmax(np.nan_to_num(t_near_axes, nan=-np.inf), axis=-1)
    normal = np.zeros(rays.shape, np.float32)
    sign = -np.sign(np.take_along_axis(rays, axis[..., None], axis=-1)[..., 0])
    np.put_along_axis(normal, axis[..., None], sign[..., None].astype(np.float32), axis=-1)
    return np.where(hit, t_near, np.inf).astype(np.float32), normal


def render_nyud_scene(shape: tuple[int, int], rng: np.random.Generator) -> NyudScene:
    """Render one synthetic NYUD-v2 image and its labels (see the module docstring)."""
    h, w = shape
    focal, horizon = 0.81 * w, rng.uniform(0.38, 0.5) * h
    cam_height, back = rng.uniform(1.2, 1.5), rng.uniform(3.5, 6.0)
    left, right = rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0)
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    rays = np.stack([(u - w / 2) / focal, (v - horizon) / focal, np.ones_like(u)], axis=-1)
    hits = _Hits(shape)
    hits.add(_plane(rays, 1, cam_height), np.array([0, -1, 0], np.float32), 2)
    hits.add(_plane(rays, 1, cam_height - ROOM_HEIGHT), np.array([0, 1, 0], np.float32), 22)
    hits.add(_plane(rays, 2, back), np.array([0, 0, -1], np.float32), 1)
    back_surface = hits.count
    hits.add(_plane(rays, 0, -left), np.array([1, 0, 0], np.float32), 1)
    hits.add(_plane(rays, 0, right), np.array([-1, 0, 0], np.float32), 1)
    _add_decorations(hits, rays, rng, back, cam_height, (left, right), back_surface)
    for label in rng.choice(list(FURNITURE), size=int(rng.integers(2, 5)), replace=False):
        size = np.array([rng.uniform(*r) for r in FURNITURE[int(label)]])
        x = rng.uniform(-left + size[0] / 2, right - size[0] / 2)
        z = rng.uniform(1.2, back - size[2] - 0.05)
        low = np.array([x - size[0] / 2, cam_height - size[1], z])
        depth, normal = _box(rays, low, low + size)
        hits.add(depth, normal, int(label))
    normals = hits.normal * np.array([1, 1, -1], np.float32)  # camera z forward -> z towards camera
    albedo = np.zeros((h, w, 3), np.float32)
    for label in np.unique(hits.label):
        mask = hits.label == label
        albedo[mask] = (
            np.float32(NYU_COLOURS[int(label)]) * class_texture(shape, int(label), rng)[..., None]
        )[mask]
    albedo *= np.clip(1.15 - 0.06 * hits.depth, 0.5, 1.1)[..., None]
    image = shade(albedo, normals, rng)
    edge = thin(label_boundaries(hits.surface)).astype(np.float32)
    depth, semseg = hits.depth.copy(), hits.label.copy()
    for _ in range(int(rng.integers(1, 3))):
        hole, _ = ellipse_mask(shape, rng.uniform(0, 1, 2) * (w, h), rng.uniform(0.02, 0.06, 2) * w)
        depth[hole] = 0.0
        normals[hole] = 0.0
    x0, y0 = int(rng.uniform(0, 0.8) * w), int(rng.uniform(0, 0.8) * h)
    semseg[y0 : y0 + max(1, h // 12), x0 : x0 + max(1, w // 12)] = 0
    return NyudScene(image, semseg, depth.astype(np.float32), normals.astype(np.float32), edge)


def _add_decorations(
    hits: _Hits,
    rays: np.ndarray,
    rng: np.random.Generator,
    back: float,
    cam_height: float,
    walls: tuple[float, float],
    back_surface: int,
) -> None:
    """Flat rectangles (pictures, windows, boards, TVs) on the back wall."""
    x_hit, y_hit = rays[..., 0] * back, rays[..., 1] * back
    on_back = hits.surface == back_surface
    for label in rng.choice(DECORATIONS, size=int(rng.integers(1, 3)), replace=False):
        width, height = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.9)
        x = rng.uniform(-walls[0] + width / 2, walls[1] - width / 2)
        top = cam_height - rng.uniform(1.2, 2.2)
        inside = (
            on_back & (np.abs(x_hit - x) <= width / 2) & (y_hit >= top) & (y_hit <= top + height)
        )
        depth = np.where(inside, back - 1e-3, np.inf).astype(np.float32)
        hits.add(depth, np.array([0, 0, -1], np.float32), int(label))


def write_nyud_dataset(
    root: Path, num_train: int, num_val: int, size: tuple[int, int], seed: int
) -> None:
    """Write a synthetic NYUD_MT dataset into ``root`` (ids ``0000``...; val ids follow train)."""
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    start = 0
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids = [f"{start + i:04d}" for i in range(count)]
        start += count
        for i, image_id in enumerate(ids):
            scene = render_nyud_scene(size, np.random.default_rng([seed, split_index, i]))
            cv2.imwrite(
                str(root / "images" / f"{image_id}.jpg"),
                scene.image[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            cv2.imwrite(str(root / "segmentation" / f"{image_id}.png"), scene.semseg)
            np.save(root / "depth" / f"{image_id}.npy", scene.depth)
            np.save(root / "normals" / f"{image_id}.npy", scene.normals)
            np.save(root / "edge" / f"{image_id}.npy", scene.edge)
        (root / "gt_sets" / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
