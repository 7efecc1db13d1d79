"""Score a folder of saved predictions (any codebase's) with the metrics of ``tools/test.py``.

The folder holds ``<task>/<id>.png`` (class ids; ``255 p`` for ``sal`` and ``edge``; RGB
``255 (n + 1) / 2`` for normals) and ``depth/<id>.mat`` (key ``depth``, metres), each at the
original image size: the layout ``tools/test.py --out-dir`` writes and the ASTMT / MTI-Net offline
evaluation reads. Ground truth comes from the dataset's validation split at its original size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.io import loadmat
from torch import Tensor

from mtlora_vision.datasets.base import MultiTaskDataset
from mtlora_vision.evaluation.metrics import MultiTaskMetric

logger = logging.getLogger(__name__)

_SEG_TASKS = ("semseg", "human_parts")


def prediction_path(pred_dir: Path, task: str, image_id: str) -> Path:
    """``<pred_dir>/<task>/<id>.png``, or ``.mat`` for depth."""
    return Path(pred_dir) / task / f"{image_id}{'.mat' if task == 'depth' else '.png'}"


def read_prediction(path: Path, task: str) -> Tensor:
    """Decode one saved prediction into the format the metric takes.

    Args:
        path: The ``.png`` or ``.mat`` file.
        task: Its task.

    Returns:
        ``int64 (H, W)`` class ids; ``float32 (1, H, W)`` probabilities ``v / 255`` for sal and
        edge; ``float32 (3, H, W)`` normals ``v / 127.5 - 1``; ``float32 (1, H, W)`` depth.

    Raises:
        ValueError: If the file cannot be read or has the wrong number of channels or key.
    """
    if task == "depth":
        try:
            depth = loadmat(path)["depth"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a MATLAB file with key 'depth' ({error}).") from None
        return torch.from_numpy(np.asarray(depth, dtype=np.float32))[None]
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{path}: not a readable image.")
    channels = 3 if task == "normals" else 1
    got = 1 if array.ndim == 2 else array.shape[2]
    if got != channels or array.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected an 8-bit {'RGB' if channels == 3 else 'single-channel'} PNG for "
            f"{task}, got {got} channel(s) of {array.dtype}."
        )
    if task in _SEG_TASKS:
        return torch.from_numpy(array.astype(np.int64))
    if task == "normals":
        rgb = torch.from_numpy(np.ascontiguousarray(array[..., ::-1])).permute(2, 0, 1)
        return rgb.float() / 127.5 - 1.0
    return torch.from_numpy(array).float()[None] / 255.0


def check_prediction_files(pred_dir: Path, tasks: Sequence[str], ids: Sequence[str]) -> None:
    """Fail before any work if a prediction file is missing.

    Raises:
        FileNotFoundError: Naming the missing files (the first 10 and the count per task).
    """
    missing = {
        task: [p for p in (prediction_path(pred_dir, task, i) for i in ids) if not p.is_file()]
        for task in tasks
    }
    missing = {task: paths for task, paths in missing.items() if paths}
    if missing:
        lines = [
            f"{task}: {len(paths)} of {len(ids)} missing, e.g. "
            + ", ".join(str(p) for p in paths[:10])
            for task, paths in missing.items()
        ]
        raise FileNotFoundError(
            f"Prediction files missing under {pred_dir} (layout <task>/<id>.png, depth/<id>.mat):"
            "\n  " + "\n  ".join(lines)
        )


def _check_size(path: Path, pred: Tensor, target: Tensor) -> None:
    if tuple(pred.shape[-2:]) != tuple(target.shape[-2:]):
        raise ValueError(
            f"{path}: prediction is {tuple(pred.shape[-2:])} (H, W) but the image and its ground "
            f"truth are {tuple(target.shape[-2:])}; save predictions at the original image size."
        )


def evaluate_predictions(
    pred_dir: Path,
    dataset: MultiTaskDataset,
    metric: MultiTaskMetric,
    batch_size: int = 16,
) -> dict[str, float]:
    """Score every image of ``dataset`` from the files under ``pred_dir``.

    Args:
        pred_dir: Folder in the ``tools/test.py --out-dir`` layout.
        dataset: Ground truth at the original image size (``keep_original_size=True``).
        metric: The metric (its tasks are the ones scored).
        batch_size: Samples handed to ``metric.process`` at once (edge workers share a batch).

    Returns:
        The metric dict, keys as ``tools/test.py`` reports them.

    Raises:
        FileNotFoundError: If a prediction file is missing (before any scoring).
        ValueError: If a prediction has another size than its image, or cannot be decoded.
    """
    pred_dir = Path(pred_dir)
    tasks = metric.tasks
    check_prediction_files(pred_dir, tasks, dataset.ids)
    extra = _extra_files(pred_dir, tasks, set(dataset.ids))
    if extra:
        logger.warning(
            "%d prediction file(s) under %s belong to no image of the split and are not scored, "
            "e.g. %s.",
            len(extra),
            pred_dir,
            extra[0],
        )
    batch: list[dict[str, Any]] = []
    for index, image_id in enumerate(dataset.ids):
        targets = dataset[index]["data_samples"]["targets"]
        pred = {}
        for task in tasks:
            path = prediction_path(pred_dir, task, image_id)
            pred[task] = read_prediction(path, task)
            _check_size(path, pred[task], targets[task])
        batch.append({"id": image_id, "pred": pred, "targets": targets})
        if len(batch) == batch_size:
            metric.process({}, batch)
            batch = []
    if batch:
        metric.process({}, batch)
    return metric.compute_metrics(metric.results)


def _extra_files(pred_dir: Path, tasks: Sequence[str], ids: set[str]) -> list[Path]:
    extra = []
    for task in tasks:
        folder = pred_dir / task
        extra += [p for p in sorted(folder.iterdir()) if p.is_file() and p.stem not in ids]
    return extra
