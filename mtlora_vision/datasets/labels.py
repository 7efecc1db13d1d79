"""Pure decoding of the raw label formats of PASCAL_MT and NYUD_MT into the package conventions.

Every function maps arrays to arrays (no file access). Label maps come out as ``uint8 (H, W)`` with
``IGNORE_INDEX`` (255) for unlabelled pixels; normals as ``float32 (H, W, 3)`` with 255.0 on all
channels where invalid; depth as ``float32 (H, W)`` metres with 255.0 where invalid. The conventions
follow the multi-task release of Maninis et al. (ASTMT, CVPR 2019) as used by MTI-Net and MTLoRA.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
from skimage.morphology import thin

from mtlora_vision.datasets.class_info import HUMAN_PART_GROUPS, PERSON_CLASS_ID
from mtlora_vision.datasets.masking import fill_where_invalid
from mtlora_vision.datasets.readers import CorruptFileError, SizeMismatchError
from mtlora_vision.tasks import IGNORE_INDEX

_INVALID = float(IGNORE_INDEX)


def _corrupt_anno(source: str, problem: str) -> CorruptFileError:
    return CorruptFileError(
        f"{source}: {problem}; expected the PASCAL-Part `anno` struct (fields imname, objects; "
        "object fields class, class_ind, mask, parts; part fields part_name, mask). Replace the "
        "file with the one of the release."
    )


def _field(record: np.ndarray | np.void, name: str, source: str) -> np.ndarray:
    """Field ``name`` of a MATLAB struct record, or an error naming the file and the field."""
    names = record.dtype.names or ()
    if name not in names:
        raise _corrupt_anno(source, f"a struct has no field {name!r} (it has {list(names)})")
    return record[name]


def _scalar(value: np.ndarray, source: str, what: str) -> object:
    """First element of a MATLAB cell/array field as loaded by scipy (e.g. ``[[15]]`` -> 15)."""
    flat = np.asarray(value).ravel()
    if flat.size == 0:
        raise _corrupt_anno(source, f"field {what!r} is empty")
    return flat[0].item() if hasattr(flat[0], "item") else flat[0]


def anno_objects(anno: np.ndarray, source: str = "<anno>") -> np.ndarray:
    """The object records of a PASCAL-Part ``anno`` variable, as a 1-D array (possibly empty).

    Args:
        anno: ``scipy.io.loadmat(path)['anno']``, a ``1x1`` struct (fields ``imname``, ``objects``).
        source: Name of the file, used in error messages.

    Raises:
        CorruptFileError: If ``anno`` is not such a struct.
    """
    if anno.dtype.names is None or anno.size != 1:
        raise _corrupt_anno(source, f"`anno` is a {anno.dtype} array of shape {anno.shape}")
    objects = _field(anno.ravel()[0], "objects", source)
    if objects.size == 0 or objects.dtype.names is None:
        return np.empty(0, dtype=object)
    return objects.ravel()


def is_annotated_person(obj: np.void, source: str = "<anno>") -> bool:
    """True if a PASCAL-Part object is a person (VOC id 15) with a non-empty ``parts`` array."""
    class_ind = _scalar(_field(obj, "class_ind", source), source, "class_ind")
    try:
        is_person = int(class_ind) == PERSON_CLASS_ID  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise _corrupt_anno(source, f"class_ind {class_ind!r} is not a number") from None
    return is_person and _field(obj, "parts", source).size > 0


def has_annotated_person(anno: np.ndarray, source: str = "<anno>") -> bool:
    """True if the image has human-part labels: one of its objects is an annotated person."""
    return any(is_annotated_person(obj, source) for obj in anno_objects(anno, source))


def decode_human_parts(
    anno: np.ndarray,
    shape: tuple[int, int],
    groups: Mapping[str, int] = HUMAN_PART_GROUPS,
    source: str = "<anno>",
) -> np.ndarray:
    """Rasterise the person parts of a PASCAL-Part annotation into the 7-class human-parts map.

    Parts of every annotated person are painted in file order (a later part wins where masks
    overlap); other pixels are background 0. An image without an annotated person has no part
    labels at all, so every pixel is ignore.

    Args:
        anno: ``scipy.io.loadmat(path)['anno']``.
        shape: ``(H, W)`` of the image; every mask must have this size.
        groups: Part name -> human-part class (1..6).
        source: Name of the file, used in error messages.

    Returns:
        ``uint8 (H, W)``: 0 background, 1..6 parts, or all 255 without an annotated person.

    Raises:
        SizeMismatchError: On a mask whose size differs from ``shape``.
        CorruptFileError: On a malformed struct.
        ValueError: On an unknown part name.
    """
    target = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    found = False
    for obj in anno_objects(anno, source):
        if not is_annotated_person(obj, source):
            continue
        if not found:
            target[:] = 0
            found = True
        for part in obj["parts"].ravel():
            name = str(_scalar(_field(part, "part_name", source), source, "part_name"))
            if name not in groups:
                raise ValueError(
                    f"{source}: unknown person part name {name!r}; expected one of "
                    f"{sorted(groups)}."
                )
            mask = np.asarray(_field(part, "mask", source))
            if mask.shape != tuple(shape):
                raise SizeMismatchError(
                    f"{source}: part {name!r} has mask size {mask.shape} but the image has size "
                    f"{tuple(shape)}."
                )
            target[mask.astype(bool)] = groups[name]
    return target


def decode_normals_png(rgb: np.ndarray) -> np.ndarray:
    """Map an 8-bit normals PNG to vectors: ``n = 2 v / 255 - 1`` per channel.

    Args:
        rgb: ``uint8 (H, W, 3)`` in the channel order as stored (x, y, z).

    Returns:
        ``float32 (H, W, 3)`` in [-1, 1] (not renormalised).
    """
    normals = np.asarray(rgb, dtype=np.uint8).astype(np.float32)
    normals *= np.float32(2.0 / 255.0)
    normals -= np.float32(1.0)
    return normals


def mask_normals(
    normals: np.ndarray, label_map: np.ndarray, valid_lookup: np.ndarray
) -> np.ndarray:
    """Keep normals only on pixels whose Context class is normals-valid; 255.0 elsewhere.

    Args:
        normals: ``float32 (H, W, 3)``.
        label_map: Integer Context ids ``(H, W)``.
        valid_lookup: Boolean table indexed by Context id (``class_info.normals_valid_lookup``).

    Returns:
        ``float32 (H, W, 3)`` with 255.0 on all channels of invalid pixels.
    """
    # Ids beyond the table clip to the appended False entry.
    table = np.append(valid_lookup, False)
    valid = np.take(table, label_map, mode="clip")
    if np.issubdtype(label_map.dtype, np.signedinteger):
        valid &= label_map >= 0
    out = np.array(normals, dtype=np.float32, copy=True)
    return fill_where_invalid(out, valid, _INVALID)


def normals_with_ignore(normals: np.ndarray, min_norm: float = 0.0) -> np.ndarray:
    """Mark missing normal vectors as invalid: 255.0 on all channels.

    Args:
        normals: ``float (H, W, 3)``, zero vectors where the release has no normal.
        min_norm: Vectors not longer than this are missing (0: exactly zero ones). 8-bit PNGs
            cannot store a zero vector (mid-grey decodes to about 0.004), so use e.g. 0.5 there.

    Returns:
        ``float32 (H, W, 3)``.
    """
    out = normals.astype(np.float32, copy=True)
    finite = np.isfinite(out).all(axis=-1)
    out[~finite] = 0.0
    missing = ~finite | (np.linalg.norm(out, axis=-1) <= min_norm)
    out[missing] = _INVALID
    return out


def edges_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """Semantic boundaries of a label map: ``|Laplacian(label_map)| > 0``, thinned to one pixel.

    Args:
        label_map: Integer class ids ``(H, W)``.

    Returns:
        ``uint8 (H, W)`` in {0, 1}.
    """
    # The 3x3 4-neighbour Laplacian (OpenCV ksize=1, reflect-101 border) on ids < 2**24 is exact in
    # float32.
    laplacian = cv2.Laplacian(label_map.astype(np.float32), cv2.CV_32F, ksize=1)
    return thin(np.abs(laplacian) > 0).astype(np.uint8)


def binarize_saliency(gray: np.ndarray) -> np.ndarray:
    """Saliency label: ``v / 255 > 0.5`` -> 1, else 0 (no ignore region).

    Args:
        gray: ``uint8 (H, W)``.

    Returns:
        ``uint8 (H, W)`` in {0, 1}.
    """
    # For bytes, v / 255 > 0.5 (in float32, as the reference code computes it) is exactly v > 127.
    return (gray > 127).view(np.uint8)


def decode_nyud_semseg(raw: np.ndarray) -> np.ndarray:
    """NYUD-v2 labels on disk (0 unlabelled, 1..40 classes) -> 0..39, unlabelled = 255.

    Args:
        raw: Integer ``(H, W)``.

    Returns:
        ``uint8 (H, W)``.
    """
    raw = raw.astype(np.int64)
    if raw.size and (raw.min() < 0 or raw.max() > 40):
        raise ValueError(f"NYUD labels must be in 0..40, got range {raw.min()}..{raw.max()}.")
    return np.where(raw == 0, IGNORE_INDEX, raw - 1).astype(np.uint8)


def depth_with_ignore(depth: np.ndarray) -> np.ndarray:
    """Depth in metres with invalid pixels (0 or non-finite on disk) set to 255.0.

    Args:
        depth: ``(H, W)`` or ``(H, W, 1)``.

    Returns:
        ``float32 (H, W)``.
    """
    out = np.asarray(depth, dtype=np.float32).reshape(depth.shape[:2]).copy()
    out[~np.isfinite(out) | (out <= 0)] = _INVALID
    return out


def binarize_edge(edge: np.ndarray) -> np.ndarray:
    """Edge labels stored as {0, 1} floats (``.npy``) or {0, 255} PNGs -> ``uint8`` {0, 1}.

    Args:
        edge: ``(H, W)`` or ``(H, W, 1)``.
    """
    values = np.asarray(edge, dtype=np.float32).reshape(edge.shape[:2])
    scale = 255.0 if values.size and values.max() > 1.0 else 1.0
    return (values / scale > 0.5).astype(np.uint8)
