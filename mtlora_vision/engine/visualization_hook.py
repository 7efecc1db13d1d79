"""Hooks that show predictions: TensorBoard images during validation, files during testing."""

from __future__ import annotations

import logging
import os
import os.path as osp
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.visualization import LocalVisBackend, Visualizer
from scipy.io import savemat
from torch import Tensor

from mtlora_vision.tasks import Kind, task_kind
from mtlora_vision.visualization.colorize import resize_value

logger = logging.getLogger(__name__)


class MultiTaskVisualizationHook(Hook):
    """Send labelled figures (input, ground truth, prediction per task) to the visualiser.

    At every validation, the first ``num_images`` samples of the first batch are drawn
    (:func:`~mtlora_vision.visualization.figure.comparison_figure`) and added to every
    visualiser backend (TensorBoard shows them under ``val/<id>``).

    Args:
        num_images: How many samples of the first validation batch to draw.
        by_epoch: Index the pictures by epoch; the default (False) indexes them by iteration, the
            step axis of the training and validation scalars (``LoggerHook`` with
            ``log_metric_by_epoch=False`` in ``configs/_base_/default_runtime.py``).
    """

    priority = "LOW"

    def __init__(self, num_images: int = 2, by_epoch: bool = False) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}.")
        self.num_images = num_images
        self.by_epoch = by_epoch

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Draw the first samples of the first validation batch."""
        if batch_idx != 0 or not outputs or self.num_images == 0:
            return
        from mtlora_vision.visualization.figure import comparison_figure, figure_to_rgb

        _make_local_image_dirs(runner.visualizer, "val")
        step = self._step(runner)
        for index, sample in enumerate(outputs[: self.num_images]):
            fig = comparison_figure(
                data_batch["inputs"][index],
                sample["pred"],
                sample.get("targets"),
                ori_shape=sample.get("ori_shape"),
                num_classes=model_num_outputs(runner),
                title=str(sample["id"]),
                names=dataset_class_names(runner.val_loop.dataloader.dataset),
            )
            runner.visualizer.add_image(f"val/{sample['id']}", figure_to_rgb(fig), step=step)

    def _step(self, runner) -> int:
        # As LoggerHook: runner.epoch would build a train loop that a val-only run has not built.
        train_loop = getattr(runner, "_train_loop", None)
        if train_loop is None or isinstance(train_loop, dict):
            return 0
        return runner.epoch if self.by_epoch else runner.iter


def model_num_outputs(runner) -> dict[str, int]:
    """Output channels per task of the runner's model (classes of the segmentation tasks)."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return dict(getattr(model, "num_outputs", {}) or {})


def dataset_class_names(dataset) -> dict[str, tuple[str, ...]]:
    """Class names per segmentation task from a dataset's ``metainfo["classes"]`` ({} if none)."""
    metainfo = getattr(dataset, "metainfo", None) or {}
    return {task: tuple(names) for task, names in (metainfo.get("classes") or {}).items() if names}


def _make_local_image_dirs(visualizer: Visualizer, group: str) -> None:
    """Create ``vis_image/<group>`` for local backends.

    mmengine's ``LocalVisBackend`` writes ``<name>_<step>.png`` without creating the folders that a
    ``/`` in the name implies, and ``cv2.imwrite`` fails silently; TensorBoard needs the ``/`` to
    group the images.
    """
    for backend in getattr(visualizer, "_vis_backends", {}).values():
        if isinstance(backend, LocalVisBackend):
            os.makedirs(osp.join(backend.experiment._img_save_dir, group), exist_ok=True)


def _resize_prediction(task: str, pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a decoded prediction: nearest for labels, bilinear for maps (normals renormalised)."""
    return resize_value(task, pred, size, labels=False)


def prediction_to_file_array(task: str, pred: Tensor) -> np.ndarray:
    """Encode a prediction as the array written to disk.

    Formats follow the community's offline evaluation (ASTMT / MTI-Net style): class ids as 8-bit
    PNG, saliency and edge probabilities as 8-bit PNG (``255 * p``), normals as RGB PNG
    (``255 * (n + 1) / 2``), depth as float32 metres in a MATLAB ``.mat`` file under the key
    ``"depth"`` (what the ASTMT / MTI-Net ``eval_depth`` reads).

    Args:
        task: Task name.
        pred: Prediction in the formats of ``mtlora_vision.models.postprocess.decode_output``.

    Returns:
        ``uint8 (H, W)`` / ``uint8 (H, W, 3)`` RGB for PNG tasks, ``float32 (H, W)`` for depth.
    """
    pred = pred.detach().cpu()
    kind = task_kind(task)
    if kind is Kind.CLASSES:
        return pred.numpy().astype(np.uint8)
    if kind is Kind.PROBABILITY:
        return (pred.float().clamp(0, 1) * 255).round().numpy().astype(np.uint8)
    if kind is Kind.VECTOR:
        rgb = ((pred.float().clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0)
        return rgb.numpy().astype(np.uint8)
    return pred.float()[0].numpy()


def write_prediction(path: Path, task: str, pred: Tensor) -> Path:
    """Write one prediction; returns the file written (``.png``, or ``.mat`` for depth)."""
    array = prediction_to_file_array(task, pred)
    path.parent.mkdir(parents=True, exist_ok=True)
    if task_kind(task) is Kind.SCALAR:
        path = path.with_suffix(".mat")
        savemat(path, {"depth": array})
        return path
    path = path.with_suffix(".png")
    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), array):
        raise OSError(f"Could not write {path}.")
    return path


class PredictionWriterHook(Hook):
    """Save test predictions per task and image, and optionally colourised side-by-side pictures.

    Args:
        out_dir: If set, predictions go to ``out_dir/<task>/<id>.png`` at the image's original size.
        show_dir: If set, labelled figures go to ``show_dir/<id>.png`` (input, ground truth and
            prediction per task, at the image's aspect ratio, with legends).
        tasks: Tasks to write; default all predicted tasks.
    """

    priority = "LOW"

    def __init__(
        self,
        out_dir: str | None = None,
        show_dir: str | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.show_dir = Path(show_dir) if show_dir else None
        self.tasks = tuple(tasks) if tasks else None

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Write the predictions of one test batch."""
        for index, sample in enumerate(outputs or []):
            preds = sample["pred"]
            tasks = self.tasks or tuple(preds)
            if self.out_dir is not None:
                ori_shape = tuple(int(s) for s in sample["ori_shape"])
                for task in tasks:
                    pred = _resize_prediction(task, preds[task], ori_shape)
                    write_prediction(self.out_dir / task / str(sample["id"]), task, pred)
            if self.show_dir is not None:
                self._write_figure(runner, data_batch["inputs"][index], sample, tasks)

    def _write_figure(self, runner, image: Tensor, sample: dict, tasks: Sequence[str]) -> None:
        from mtlora_vision.visualization.figure import comparison_figure, save_figure

        fig = comparison_figure(
            image,
            sample["pred"],
            sample.get("targets"),
            tasks,
            ori_shape=sample.get("ori_shape"),
            num_classes=model_num_outputs(runner),
            title=str(sample["id"]),
            names=dataset_class_names(runner.test_loop.dataloader.dataset),
        )
        self.show_dir.mkdir(parents=True, exist_ok=True)
        save_figure(fig, self.show_dir / f"{sample['id']}.png")

    def after_test_epoch(self, runner, metrics=None) -> None:
        """Say where the files went."""
        for what, folder in (("predictions", self.out_dir), ("pictures", self.show_dir)):
            if folder is not None:
                runner.logger.info(f"Test {what} written to {folder}")


__all__ = ["MultiTaskVisualizationHook", "PredictionWriterHook"]
