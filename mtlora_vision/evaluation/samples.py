"""Reading one data sample's predictions and targets for the metrics, with clear errors.

``docs/design.md`` sections 3 and 4: predictions are integer class ids for class tasks and
probabilities in [0, 1] for saliency and edges; a NaN or inf prediction means diverged weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def pred_and_targets(
    sample: Mapping[str, Any], tasks: Sequence[str]
) -> tuple[Mapping[str, Tensor], Mapping[str, Tensor]]:
    """``sample["pred"]`` and ``sample["targets"]``, checked for every task and finite values."""
    for field in ("pred", "targets"):
        if field not in sample:
            raise KeyError(
                f"Data sample has no {field!r} (keys: {list(sample)}); the model's "
                "mode='predict' must return the input data samples plus 'pred'."
            )
    pred, targets = sample["pred"], sample["targets"]
    for task in tasks:
        for field, values in (("pred", pred), ("targets", targets)):
            if task not in values:
                raise KeyError(f"Task {task!r} missing from sample[{field!r}] ({list(values)}).")
        value = pred[task]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(
                f"The {task} prediction of sample {sample.get('id', '?')!r} holds NaN or inf: the "
                "model's weights have diverged. Lower the learning rate and resume from an earlier "
                "checkpoint."
            )
    return pred, targets


def squeeze_channel(tensor: Tensor) -> Tensor:
    """Drop a leading singleton channel: ``(1, H, W)`` -> ``(H, W)``."""
    return tensor[0] if tensor.ndim == 3 and tensor.shape[0] == 1 else tensor


def label_map(pred: Tensor, task: str) -> Tensor:
    """The ``(H, W)`` class-id map of a class task's prediction; floats are an error."""
    if pred.is_floating_point():
        raise ValueError(
            f"{task} prediction must hold integer class ids (argmax), got dtype {pred.dtype}."
        )
    return squeeze_channel(pred)


def prob_map(pred: Tensor, task: str) -> Tensor:
    """The ``(H, W)`` probability map of a saliency or edge prediction (values in [0, 1])."""
    pred = squeeze_channel(pred).detach()
    if pred.numel() and not (float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0):
        raise ValueError(
            f"{task} prediction must be probabilities in [0, 1] (apply a sigmoid), got values in "
            f"[{float(pred.min())}, {float(pred.max())}]."
        )
    return pred
