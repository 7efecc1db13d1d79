"""NYUD-v2 multi-task dataset as released with MTI-Net / ATRC (795 train / 654 val images).

Layout under the root: ``images/<id>.{jpg,png}``, ``segmentation/<id>.png``, ``depth/<id>.npy``,
``normals/<id>.{npy,png}``, ``edge/<id>.{npy,png}`` and ``gt_sets/{train,val}.txt``. The extension
of each folder is read from the files (releases differ). Conventions of that release:

* semseg: PNG with 0 = unlabelled and 1..40 the NYU40 classes; read as ``k - 1`` (0..39) with
  unlabelled -> 255, as MTI-Net does ("we ignore the background class").
* depth: metres as float ``.npy``; 0 marks missing depth -> 255.
* normals: float ``.npy`` (or an 8-bit PNG, ``2 v / 255 - 1``), zero vectors where missing -> 255.
* edge: {0, 1} ``.npy`` (or a 0/255 PNG).

Training augmentation follows MTI-Net: horizontal flip, a zoom about the centre by one of 1.0, 1.2,
1.5 (no rotation; depth divided by the zoom), then the fixed resize to ``img_size`` (default
480x640, MTI-Net's training size, which keeps the aspect ratio of 480x640 images).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mtlora_vision.datasets.base import MultiTaskDataset, check_files_exist, read_split_ids
from mtlora_vision.datasets.class_info import NYUD_CLASSES
from mtlora_vision.datasets.labels import (
    binarize_edge,
    decode_normals_png,
    decode_nyud_semseg,
    depth_with_ignore,
    normals_with_ignore,
)
from mtlora_vision.datasets.readers import (
    CorruptFileError,
    check_same_size,
    read_label_png,
    read_npy,
    read_rgb,
)
from mtlora_vision.datasets.transforms import MultiTaskTransform

logger = logging.getLogger(__name__)

NYUD_TASKS: tuple[str, ...] = ("semseg", "depth", "normals", "edge")
NYUD_SPLIT_SIZES: Mapping[str, int] = {"train": 795, "val": 654}
#: Folder and accepted extensions (in order of preference) of each file kind.
NYUD_LAYOUT: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "image": ("images", (".jpg", ".png")),
    "semseg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normals": ("normals", (".npy", ".png")),
    "edge": ("edge", (".npy", ".png")),
}


def resolve_extension(folder: Path, first_id: str, extensions: Sequence[str]) -> str:
    """The extension used in ``folder``, judged from the first image id (default: the first one)."""
    for ext in extensions:
        if (folder / f"{first_id}{ext}").is_file():
            return ext
    return extensions[0]


class NYUDMT(MultiTaskDataset):
    """NYUD-v2 multi-task dataset.

    Args:
        data_root: Folder of the NYUD_MT release (with ``images/``, ``gt_sets/`` ...).
        split: ``"train"`` or ``"val"`` (``gt_sets/<split>.txt``).
        tasks: Any subset of ``semseg``, ``depth``, ``normals``, ``edge``.
        img_size: Network input ``(H, W)``; default 480x640.
        augment: MTI-Net training augmentation; default True for the train split.
        keep_original_size: Original-resolution evaluation (targets keep their size on disk).
        flip_prob: Horizontal-flip probability of the augmentation.
        scale_choices: Zooms about the centre, one drawn uniformly per sample.
        synthesize_if_missing: If given, ``data_root`` is missing and is its ``root``, first
            write a synthetic dataset there with these settings (``num_train``, ``num_val``,
            ``size``, ``seed``); any other missing ``data_root`` is an error.
    """

    dataset_name: ClassVar[str] = "nyud"
    available_tasks: ClassVar[tuple[str, ...]] = NYUD_TASKS
    classes: ClassVar[Mapping[str, tuple[str, ...]]] = {"semseg": NYUD_CLASSES}

    def __init__(
        self,
        data_root: str | Path,
        split: str = "train",
        tasks: Sequence[str] = NYUD_TASKS,
        img_size: Sequence[int] = (480, 640),
        augment: bool | None = None,
        keep_original_size: bool = False,
        flip_prob: float = 0.5,
        scale_choices: Sequence[float] = (1.0, 1.2, 1.5),
        synthesize_if_missing: Mapping[str, Any] | None = None,
    ) -> None:
        self._setup(data_root, split, tasks, synthesize_if_missing)
        split_file = self.data_root / "gt_sets" / f"{split}.txt"
        self.ids = read_split_ids(split_file, split, str(split_file.parent))
        kinds = ("image", *self.tasks)
        self._files: dict[str, tuple[Path, str]] = {}
        for kind in kinds:
            folder, extensions = NYUD_LAYOUT[kind]
            ext = resolve_extension(self.data_root / folder, self.ids[0], extensions)
            self._files[kind] = (self.data_root / folder, ext)
        check_files_exist(
            [self._path(kind, i) for i in self.ids for kind in kinds],
            self.prepare_command(self.data_root),
        )
        self.transform = MultiTaskTransform(
            img_size,
            augment=split == "train" if augment is None else augment,
            flip_prob=flip_prob,
            scale_choices=scale_choices,
            rotate_range=(0.0, 0.0),
            resize_targets=not keep_original_size,
        )
        self._warn_if_not_release(len(self.ids), "NYUD_MT", NYUD_SPLIT_SIZES)

    def _path(self, kind: str, image_id: str) -> Path:
        folder, ext = self._files[kind]
        return folder / f"{image_id}{ext}"

    def load_sample(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Image ``uint8 (H, W, 3)`` and raw targets at its size (see ``MultiTaskTransform``)."""
        image_id = self.ids[index]
        image = read_rgb(self._path("image", image_id))
        shape = (int(image.shape[0]), int(image.shape[1]))
        targets: dict[str, np.ndarray] = {}
        for task in self.tasks:
            path = self._path(task, image_id)
            targets[task] = decode_nyud_file(task, path)
            check_same_size(path, targets[task], shape)
        return image, targets


def decode_nyud_file(task: str, path: Path) -> np.ndarray:
    """Read one NYUD_MT label file into the raw target of ``MultiTaskTransform``.

    Args:
        task: ``semseg``, ``depth``, ``normals`` or ``edge``.
        path: The ``.png`` or ``.npy`` file.

    Returns:
        ``uint8 (H, W)`` label maps, ``float32 (H, W, 3)`` normals or ``float32 (H, W)`` depth,
        with 255 where invalid.

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be read or holds unexpected values or shapes.
    """
    if task == "semseg":
        raw = read_label_png(path)
        try:
            return decode_nyud_semseg(raw)
        except ValueError as err:
            raise CorruptFileError(f"NYUD label file {str(path)!r}: {err}") from err
    if path.suffix == ".png":
        if task == "normals":
            return normals_with_ignore(
                decode_normals_png(read_rgb(path, strict=True)), min_norm=0.5
            )
        return binarize_edge(read_label_png(path))
    array = read_npy(path)
    channels = 3 if task == "normals" else 1
    if not (array.ndim == 3 and array.shape[-1] == channels) and not (
        array.ndim == 2 and channels == 1
    ):
        expected = "(H, W, 3)" if channels == 3 else "(H, W) or (H, W, 1)"
        raise CorruptFileError(
            f"NYUD {task} file {str(path)!r} has shape {array.shape}, expected {expected}; "
            "replace it with the file of the release."
        )
    if not np.issubdtype(array.dtype, np.number):
        raise CorruptFileError(
            f"NYUD {task} file {str(path)!r} holds {array.dtype} values, expected numbers."
        )
    if task == "depth":
        return depth_with_ignore(array)
    if task == "normals":
        return normals_with_ignore(array)
    return binarize_edge(array)
