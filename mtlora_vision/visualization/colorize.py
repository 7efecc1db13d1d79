"""Pure functions that turn targets and predictions into RGB pictures (``uint8 (H, W, 3)``).

The labelled figures built from them are in :mod:`mtlora_vision.visualization.figure`.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_vision.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from mtlora_vision.tasks import IGNORE_INDEX, TASKS, Kind, task_kind


def label_palette(num_colors: int = 256) -> np.ndarray:
    """Return the PASCAL VOC colour map: class ``c`` gets bits of ``c`` spread over R, G and B.

    Returns:
        ``uint8 (num_colors, 3)``.
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for label in range(num_colors):
        value, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (r, g, b)
    return palette


_PALETTE = label_palette()


def denormalize_image(image: Tensor) -> np.ndarray:
    """Undo ImageNet normalisation.

    Args:
        image: ``(3, H, W)`` normalised image.

    Returns:
        ``uint8 (H, W, 3)`` RGB.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device)[:, None, None]
    rgb = ((image * std + mean).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


#: Ignored pixels (value 255 in every target) are drawn as grey hatching: light grey with dark
#: diagonal stripes, unlike any palette colour, grey level or normal.
IGNORE_LIGHT = (200, 200, 200)
IGNORE_DARK = (110, 110, 110)
HATCH_PERIOD = 6


def hatch_ignored(rgb: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Draw ``ignored`` pixels of ``rgb`` as grey diagonal hatching (in place; also returned).

    Args:
        rgb: ``uint8 (H, W, 3)``.
        ignored: ``bool (H, W)``.
    """
    rows, cols = np.indices(ignored.shape)
    stripe = (rows + cols) % HATCH_PERIOD < 2
    rgb[ignored & stripe] = IGNORE_DARK
    rgb[ignored & ~stripe] = IGNORE_LIGHT
    return rgb


def colorize(task: str, value: Tensor) -> np.ndarray:
    """Colourise a target or a prediction of ``task``.

    Label maps use the VOC palette, probabilities and binary maps are grey levels, normals map
    ``[-1, 1]`` to ``[0, 255]``, depth uses the viridis colour map; ignored pixels (255) are
    hatched grey (:func:`hatch_ignored`) in every task.

    Args:
        task: Task name.
        value: ``(H, W)`` labels or probabilities, ``(3, H, W)`` normals or ``(1, H, W)`` depth.

    Returns:
        ``uint8 (H, W, 3)`` RGB.
    """
    value = value.detach().cpu()
    colormap = TASKS[task].colormap if task in TASKS else None
    if colormap == "palette":
        labels = value.long().numpy()
        return hatch_ignored(_PALETTE[np.clip(labels, 0, 255)], labels == IGNORE_INDEX)
    if colormap == "grey":
        grey = value.float().numpy()
        ignored = grey == IGNORE_INDEX
        levels = (np.clip(grey, 0, 1) * 255).round().astype(np.uint8)
        return hatch_ignored(np.repeat(levels[..., None], 3, axis=2), ignored)
    if colormap == "normals":
        normals = value.float().numpy().transpose(1, 2, 0)
        invalid = (normals == IGNORE_INDEX).all(axis=2)
        rgb = ((np.clip(normals, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        return hatch_ignored(rgb, invalid)
    if colormap == "viridis":
        depth = value.float().numpy()[0]
        valid = depth != IGNORE_INDEX
        scaled = np.zeros_like(depth)
        if valid.any():
            low, high = depth[valid].min(), depth[valid].max()
            scaled[valid] = (depth[valid] - low) / max(high - low, 1e-6)
        bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
        return hatch_ignored(bgr[..., ::-1].copy(), ~valid)
    raise ValueError(f"No colour rule for task {task!r}.")


def resize_value(task: str, value: Tensor, size: tuple[int, int], labels: bool) -> Tensor:
    """Resize a target or prediction for display or writing.

    Targets and label maps are resized by nearest neighbour (keeps class ids and the ignore
    value); continuous predictions bilinearly, normals renormalised to unit length.

    Args:
        task: Task name.
        value: ``(H, W)`` or ``(C, H, W)``.
        size: Output ``(H, W)``.
        labels: Whether ``value`` holds labels or the ignore value (every target does).
    """
    if tuple(value.shape[-2:]) == tuple(size):
        return value
    maps = value if value.dim() == 3 else value[None]
    if labels or task_kind(task) is Kind.CLASSES:
        resized = F.interpolate(maps[None].float(), size=size, mode="nearest")[0]
        resized = resized.to(value.dtype)
    else:
        resized = F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)
        resized = resized[0]
        if task_kind(task) is Kind.VECTOR:
            resized = F.normalize(resized, dim=0)
    return resized if value.dim() == 3 else resized[0]
