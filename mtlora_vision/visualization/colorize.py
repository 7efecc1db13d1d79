"""Pure functions that turn targets and predictions into RGB pictures (``uint8 (H, W, 3)``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from mtlora_vision.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from mtlora_vision.tasks import IGNORE_INDEX, TASKS


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


def colorize(task: str, value: Tensor) -> np.ndarray:
    """Colourise a target or a prediction of ``task``.

    Label maps use the VOC palette (ignore in white), probabilities and binary maps are grey
    levels, normals map ``[-1, 1]`` to ``[0, 255]`` (ignore black), depth uses a colour map.

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
        rgb = _PALETTE[np.clip(labels, 0, 255)]
        rgb[labels == IGNORE_INDEX] = 255
        return rgb
    if colormap == "grey":
        grey = value.float().numpy()
        grey = np.where(grey == IGNORE_INDEX, 0.5, np.clip(grey, 0, 1))
        return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    if colormap == "normals":
        normals = value.float().numpy().transpose(1, 2, 0)
        invalid = (normals == IGNORE_INDEX).all(axis=2)
        rgb = ((np.clip(normals, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        rgb[invalid] = 0
        return rgb
    if colormap == "viridis":
        depth = value.float().numpy()[0]
        valid = depth != IGNORE_INDEX
        scaled = np.zeros_like(depth)
        if valid.any():
            low, high = depth[valid].min(), depth[valid].max()
            scaled[valid] = (depth[valid] - low) / max(high - low, 1e-6)
        bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
        rgb = bgr[..., ::-1].copy()
        rgb[~valid] = 0
        return rgb
    raise ValueError(f"No colour rule for task {task!r}.")


def _fit(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if picture.shape[:2] == size:
        return picture
    return cv2.resize(picture, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def make_panel(
    image: Tensor,
    preds: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    tasks: Sequence[str] | None = None,
) -> np.ndarray:
    """Side-by-side picture: per task a row with the input, the target (if any) and the prediction.

    Args:
        image: ``(3, H, W)`` normalised input.
        preds: Task -> prediction (formats of ``mtlora_vision.models.postprocess.decode_output``).
        targets: Task -> target, optional.
        tasks: Tasks (rows) to draw, in order; default all of ``preds``.

    Returns:
        ``uint8 (rows * H, columns * W, 3)`` RGB, every cell resized to the prediction's size.
    """
    tasks = list(tasks or preds)
    rows = []
    for task in tasks:
        pred = colorize(task, preds[task])
        size = pred.shape[:2]
        cells = [_fit(denormalize_image(image), size)]
        if targets is not None and task in targets:
            cells.append(_fit(colorize(task, targets[task]), size))
        cells.append(pred)
        rows.append(np.concatenate(cells, axis=1))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
    return np.concatenate(rows, axis=0)
