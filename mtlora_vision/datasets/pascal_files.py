"""Reading one PASCAL_MT file into its raw target, with every check; each error names the file.

The dataset (``pascal_context.py``) and the verification of ``prepare.py`` both read files through
these functions, so ``tools/prepare_dataset.py --check`` reports exactly the files that training
would stop at. Formats: ``docs/data.md#file-formats``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlora_vision.datasets.class_info import VOC_CLASSES
from mtlora_vision.datasets.labels import (
    binarize_saliency,
    decode_human_parts,
    decode_normals_png,
    has_annotated_person,
)
from mtlora_vision.datasets.readers import (
    check_label_map,
    check_label_values,
    check_same_size,
    read_gray,
    read_label_png,
    read_mat_variable,
    read_rgb,
)

NUM_SEMSEG_CLASSES = len(VOC_CLASSES)


def read_semseg(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """VOC segmentation PNG as ``uint8 (H, W)``: 0..20, 255 ignore.

    Raises:
        FileNotFoundError, CorruptFileError, SizeMismatchError: Naming ``path``.
    """
    labels = read_label_png(path)
    check_same_size(path, labels, shape)
    check_label_values(path, labels, NUM_SEMSEG_CLASSES)
    return labels


def read_saliency(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Distilled saliency PNG, binarised at ``v / 255 > 0.5``: ``uint8 (H, W)`` in {0, 1}.

    Raises:
        FileNotFoundError, CorruptFileError, SizeMismatchError: Naming ``path``.
    """
    gray = read_gray(path)
    check_same_size(path, gray, shape)
    return binarize_saliency(gray)


def read_context_labels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """PASCAL-Context ``LabelMap`` as integer ids ``(H, W)``.

    Raises:
        FileNotFoundError, CorruptFileError, SizeMismatchError: Naming ``path``.
    """
    labels = check_label_map(path, read_mat_variable(path, "LabelMap"))
    check_same_size(path, labels, shape)
    return labels


def read_normals(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Distilled normals PNG decoded to ``float32 (H, W, 3)`` in [-1, 1] (not yet masked).

    Raises:
        FileNotFoundError, CorruptFileError, SizeMismatchError: Naming ``path``; the PNG must be
            8-bit RGB.
    """
    rgb = read_rgb(path, strict=True)
    check_same_size(path, rgb, shape)
    return decode_normals_png(rgb)


def read_human_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """PASCAL-Part ``anno`` rasterised to the 7-class map ``uint8 (H, W)``; all 255 without persons.

    Raises:
        FileNotFoundError, CorruptFileError, SizeMismatchError, ValueError: Naming ``path``.
    """
    return decode_human_parts(read_mat_variable(path, "anno"), shape, source=str(path))


def has_person(path: Path) -> bool:
    """True if the PASCAL-Part file has an annotated person (so the image has part labels)."""
    return has_annotated_person(read_mat_variable(path, "anno"), source=str(path))
