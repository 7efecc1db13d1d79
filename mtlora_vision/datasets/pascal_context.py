"""PASCAL-Context multi-task dataset (PASCAL_MT release of Maninis et al., ASTMT, CVPR 2019).

Tasks: semseg (21 VOC classes), human_parts (7), sal (binary), normals (distilled, valid on 170
Context classes) and edge (Context boundaries, thinned); splits train (4,998) and val (5,105). The
layout and formats are described in ``docs/data.md#file-formats``; MTLoRA (Agiza et al., CVPR 2024)
trains on it with the pipeline of ``transforms.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mtlora_vision.datasets.base import MultiTaskDataset, check_files_exist, read_split_ids
from mtlora_vision.datasets.cache import DerivedLabelCache, cached_flags, dataset_cache_dir
from mtlora_vision.datasets.class_info import HUMAN_PART_CLASSES, VOC_CLASSES, normals_valid_lookup
from mtlora_vision.datasets.labels import edges_from_label_map, mask_normals
from mtlora_vision.datasets.pascal_files import (
    has_person,
    read_context_labels,
    read_human_parts,
    read_normals,
    read_saliency,
    read_semseg,
)
from mtlora_vision.datasets.readers import read_rgb
from mtlora_vision.datasets.transforms import MultiTaskTransform
from mtlora_vision.evaluation.functional.seism import seism_gt_boundaries

logger = logging.getLogger(__name__)

PASCAL_TASKS: tuple[str, ...] = ("semseg", "human_parts", "sal", "normals", "edge")
#: Image counts of the real release.
PASCAL_SPLIT_SIZES: Mapping[str, int] = {"train": 4998, "val": 5105}
#: Edge labels from the context label map: ASTMT's training labels or SEISM's ground truth.
_EDGE_LABELS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "laplacian": edges_from_label_map,
    "seg2bmap": seism_gt_boundaries,
}


def pascal_paths(root: Path, image_id: str) -> dict[str, Path]:
    """Files of one image in the PASCAL_MT layout (semseg: VOC12, else pascal-context)."""
    semseg = root / "semseg" / "VOC12" / f"{image_id}.png"
    if not semseg.is_file():
        semseg = root / "semseg" / "pascal-context" / f"{image_id}.png"
    return {
        "image": root / "JPEGImages" / f"{image_id}.jpg",
        "semseg": semseg,
        "human_parts": root / "human_parts" / f"{image_id}.mat",
        "sal": root / "sal_distill" / f"{image_id}.png",
        "normals": root / "normals_distill" / f"{image_id}.png",
        "context": root / "pascal-context" / "trainval" / f"{image_id}.mat",
    }


def required_files(tasks: Sequence[str]) -> tuple[str, ...]:
    """Keys of :func:`pascal_paths` that the tasks read."""
    keys = ["image", *(t for t in ("semseg", "human_parts", "sal", "normals") if t in tasks)]
    if "normals" in tasks or "edge" in tasks:
        keys.append("context")
    return tuple(keys)


class PascalContextMT(MultiTaskDataset):
    """PASCAL-Context multi-task dataset.

    Args:
        data_root: Folder of the PASCAL_MT release (with ``JPEGImages/``, ``ImageSets/`` ...).
        split: ``"train"`` or ``"val"`` (``ImageSets/Context/<split>.txt``).
        tasks: Any subset of ``semseg``, ``human_parts``, ``sal``, ``normals``, ``edge``. When
            ``human_parts`` is the only task, images without an annotated person are dropped.
        img_size: Network input ``(H, W)``; default 448x448.
        augment: Official training augmentation; default True for the train split.
        keep_original_size: Original-resolution evaluation: targets keep the size on disk, only
            ``inputs`` are resized (the model resizes its outputs back). Requires no augmentation.
        pad_labels_with_ignore: Borders exposed by rotation/zoom-out are ignore (255) instead of
            the official background.
        flip_prob: Horizontal-flip probability of the augmentation.
        scale_range: Zoom range of the augmentation.
        rotate_range: Rotation range of the augmentation, in degrees.
        cache_dir: Root of the cache of derived labels (edges, human parts, the person index);
            default ``~/.cache/mtlora_vision``. Never inside ``data_root``.
        use_cache: False computes every derived label on the fly and writes nothing.
        edge_labels: How edge labels derive from the context label map: ``"laplacian"`` (the
            ASTMT training labels: ``|Laplacian| > 0``, thinned) or ``"seg2bmap"`` (the ground
            truth of the SEISM evaluation: BSDS ``seg2bmap``, thinned; see
            ``docs/edge_evaluation.md``).
        synthesize_if_missing: If given, ``data_root`` is missing and is its ``root``, first
            write a synthetic dataset there with these settings (``num_train``, ``num_val``,
            ``size``, ``seed``); any other missing ``data_root`` is an error.
    """

    dataset_name: ClassVar[str] = "pascal_context"
    available_tasks: ClassVar[tuple[str, ...]] = PASCAL_TASKS
    classes: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "semseg": VOC_CLASSES,
        "human_parts": HUMAN_PART_CLASSES,
    }

    def __init__(
        self,
        data_root: str | Path,
        split: str = "train",
        tasks: Sequence[str] = PASCAL_TASKS,
        img_size: Sequence[int] = (448, 448),
        augment: bool | None = None,
        keep_original_size: bool = False,
        pad_labels_with_ignore: bool = False,
        flip_prob: float = 0.5,
        scale_range: Sequence[float] = (0.75, 1.25),
        rotate_range: Sequence[float] = (-20.0, 20.0),
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        synthesize_if_missing: Mapping[str, Any] | None = None,
        edge_labels: str = "laplacian",
    ) -> None:
        if edge_labels not in _EDGE_LABELS:
            raise ValueError(
                f"edge_labels={edge_labels!r} is not one of {sorted(_EDGE_LABELS)}: 'laplacian' "
                "for training, 'seg2bmap' for the SEISM evaluation."
            )
        self.edge_labels = edge_labels
        self._setup(data_root, split, tasks, synthesize_if_missing)
        self.cache_dir = (
            dataset_cache_dir(cache_dir, self.dataset_name, self.data_root) if use_cache else None
        )
        self.label_cache = DerivedLabelCache(self.cache_dir)
        split_file = self.data_root / "ImageSets" / "Context" / f"{split}.txt"
        ids = read_split_ids(split_file, split, str(split_file.parent))
        self._paths = {image_id: pascal_paths(self.data_root, image_id) for image_id in ids}
        keys = required_files(self.tasks)
        check_files_exist(
            [self._paths[i][k] for i in ids for k in keys], self.prepare_command(self.data_root)
        )
        self.ids = self._drop_images_without_persons(ids) if self.tasks == ("human_parts",) else ids
        self.transform = MultiTaskTransform(
            img_size,
            augment=split == "train" if augment is None else augment,
            flip_prob=flip_prob,
            scale_range=scale_range,
            rotate_range=rotate_range,
            pad_labels_with_ignore=pad_labels_with_ignore,
            resize_targets=not keep_original_size,
        )
        self._warn_if_not_release(len(ids), "PASCAL_MT", PASCAL_SPLIT_SIZES)

    def _drop_images_without_persons(self, ids: list[str]) -> list[str]:
        sources = {image_id: self._paths[image_id]["human_parts"] for image_id in ids}

        def compute(image_id: str, path: Path) -> bool:
            return has_person(path)

        if self.cache_dir is None:
            flags = {image_id: compute(image_id, path) for image_id, path in sources.items()}
        else:
            index_file = self.cache_dir / f"human_parts_index_{self.split}.json"
            flags = cached_flags(index_file, sources, compute)
        kept = [image_id for image_id in ids if flags[image_id]]
        logger.info(
            "human_parts is the only task: dropped %d of %d %s images without an annotated person.",
            len(ids) - len(kept),
            len(ids),
            self.split,
        )
        return kept

    def load_sample(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Image ``uint8 (H, W, 3)`` and raw targets at its size (see ``MultiTaskTransform``)."""
        image_id = self.ids[index]
        paths = self._paths[image_id]
        image = read_rgb(paths["image"])
        shape = (int(image.shape[0]), int(image.shape[1]))
        targets: dict[str, np.ndarray] = {}
        label_map: list[np.ndarray] = []

        def context_labels() -> np.ndarray:
            if not label_map:
                label_map.append(read_context_labels(paths["context"], shape))
            return label_map[0]

        if "semseg" in self.tasks:
            targets["semseg"] = read_semseg(paths["semseg"], shape)
        if "human_parts" in self.tasks:
            targets["human_parts"] = self.label_cache.get(
                "human_parts",
                image_id,
                paths["human_parts"],
                lambda: read_human_parts(paths["human_parts"], shape),
                shape,
            )
        if "sal" in self.tasks:
            targets["sal"] = read_saliency(paths["sal"], shape)
        if "normals" in self.tasks:
            targets["normals"] = mask_normals(
                read_normals(paths["normals"], shape), context_labels(), normals_valid_lookup()
            )
        if "edge" in self.tasks:
            derive = _EDGE_LABELS[self.edge_labels]
            targets["edge"] = self.label_cache.get(
                "edge" if self.edge_labels == "laplacian" else f"edge-{self.edge_labels}",
                image_id,
                paths["context"],
                lambda: derive(context_labels()),
                shape,
            )
        return image, targets
