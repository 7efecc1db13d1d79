"""Predictions on the user's own images, of any size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from mtlora_vision.models.postprocess import postprocess_outputs
from mtlora_vision.visualization.colorize import IMAGENET_MEAN, IMAGENET_STD


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)`` RGB; a missing or unreadable file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image {str(path)!r} does not exist.")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"Image {str(path)!r} could not be decoded; is it a JPEG or PNG file?")
    return np.ascontiguousarray(bgr[..., ::-1])


def preprocess_image(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Resize (bicubic, aspect ratio not kept, as in training) and ImageNet-normalise.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        size: Model input ``(H, W)``.

    Returns:
        ``float32 (3, size[0], size[1])``.
    """
    resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    tensor = torch.from_numpy(resized).float().div_(255).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (tensor - mean) / std


@torch.no_grad()
def predict_images(
    model: nn.Module, paths: Sequence[str | Path], size: tuple[int, int], batch_size: int = 4
) -> list[dict]:
    """Predict every task for each image, at the image's own resolution.

    Args:
        model: A ``MultiTaskModel`` in eval mode.
        paths: Image files.
        size: Model input ``(H, W)``; images are resized to it and outputs resized back.
        batch_size: Images per forward pass.

    Returns:
        Per image ``{"id", "ori_shape", "inputs" (3, H, W), "pred": {task: Tensor}}``.
    """
    device = next(model.parameters()).device
    results: list[dict] = []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        images = [read_image(p) for p in chunk]
        inputs = torch.stack([preprocess_image(im, size) for im in images]).to(device)
        outputs = model(inputs, mode="tensor")
        preds = postprocess_outputs(outputs, [im.shape[:2] for im in images])
        for path, image, tensor, pred in zip(chunk, images, inputs, preds, strict=True):
            results.append(
                {
                    "id": path.stem,
                    "ori_shape": image.shape[:2],
                    "inputs": tensor.cpu(),
                    "pred": pred,
                }
            )
    return results
