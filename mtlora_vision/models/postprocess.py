"""Turn raw multi-task head outputs into predictions ready for metrics, files and pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_vision.tasks import Kind, task_kind


def resize_output(output: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize one raw output map.

    Args:
        output: Raw output ``(K, h, w)``.
        size: Target ``(H, W)``.

    Returns:
        The output ``(K, H, W)``; the input itself when it already has that size.
    """
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return F.interpolate(output[None], size=size, mode="bilinear", align_corners=False)[0]


def decode_output(task: str, output: Tensor) -> Tensor:
    """Decode one raw output map of ``task``.

    Args:
        task: Task name.
        output: Raw output ``(K, H, W)`` (logits, or unnormalised normals, or depth).

    Returns:
        ``int64 (H, W)`` classes for semseg/human_parts, ``float32 (H, W)`` probabilities for
        sal/edge, ``float32 (3, H, W)`` unit normals, ``float32 (1, H, W)`` depth.
    """
    kind = task_kind(task)
    if kind is Kind.CLASSES:
        return output.argmax(dim=0)
    if kind is Kind.PROBABILITY:
        return torch.sigmoid(output[0].float())
    if kind is Kind.VECTOR:
        return F.normalize(output.float(), dim=0)
    return output.float()


def postprocess_outputs(
    outputs: Mapping[str, Tensor], sizes: Sequence[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """Decode a batch of raw outputs, resized to each sample's size.

    Raw outputs are resized before decoding (logits, not labels, are interpolated), which is how
    evaluation at the original image resolution is done.

    Args:
        outputs: Task -> raw outputs ``(B, K_t, H, W)`` at input resolution.
        sizes: Per sample, the ``(H_i, W_i)`` the predictions should have.

    Returns:
        One dict task -> prediction per sample (formats of :func:`decode_output`).
    """
    preds: list[dict[str, Tensor]] = []
    items = list(outputs.items())
    for i, size in enumerate(sizes):
        size = (int(size[0]), int(size[1]))
        preds.append(
            {task: decode_output(task, resize_output(out[i], size)) for task, out in items}
        )
    return preds
