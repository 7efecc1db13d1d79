"""Packing of dense targets into the few arrays one albumentations call moves together.

Multi-class label maps each get a ``uint8`` channel of the stacked mask. Binary label maps (values
0, 1, 255) and the validity of the normals share one extra ``uint8`` "flags" channel (2 bits per
label map, 1 validity bit), so the mask has at most 3 channels (one warp call, where albumentations
would otherwise split more than 4 channels into chunks). Nearest-neighbour warps move each byte
unchanged; a border filled with 0 decodes as label 0 and invalid, one filled with 255 as ignore and
invalid. Normals travel as a float image target (cubic) with invalid pixels set to 0, and their
validity is re-applied afterwards, so ignore values never blend into valid ones. Depth travels as a
nearest-interpolated float target that carries its own validity (0 invalid; 255 from ignore
padding), because OpenCV's nearest-neighbour warp can pick different source pixels for ``uint8``
and ``float32`` arrays, so a separate validity channel would not line up exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mtlora_vision.datasets.masking import fill_where_invalid
from mtlora_vision.tasks import IGNORE_INDEX

#: Tasks stored as ``uint8`` label maps (255 ignore).
LABEL_MAP_TASKS: tuple[str, ...] = ("semseg", "human_parts", "sal", "edge")

_BINARY_BITS = {"sal": 0, "edge": 2}
_VALIDITY_BITS = {"normals": 4}
_CODE_OF = np.zeros(256, np.uint8)
_CODE_OF[[1, IGNORE_INDEX]] = [1, 2]
_VALUE_OF = np.array([0, 1, IGNORE_INDEX, IGNORE_INDEX], np.uint8)
_BYTES = np.arange(256, dtype=np.uint8)


def _encode_table(bit: int) -> np.ndarray:
    """Byte table: label value (0, 1, 255) -> its 2-bit code shifted to ``bit``."""
    return (_CODE_OF << bit).astype(np.uint8)


def _decode_table(bit: int) -> np.ndarray:
    """Byte table: flags byte -> label value of the 2 bits at ``bit``; 255 (padding) -> ignore."""
    table = _VALUE_OF[(_BYTES >> bit) & 3]
    table[IGNORE_INDEX] = IGNORE_INDEX
    return table


def _validity_table(bit: int) -> np.ndarray:
    """Byte table: flags byte -> 1 if the validity bit is set, 0 for it unset or padding."""
    table = ((_BYTES >> bit) & 1).astype(np.uint8)
    table[IGNORE_INDEX] = 0
    return table


_ENCODE = {name: _encode_table(bit) for name, bit in _BINARY_BITS.items()}
_DECODE = {name: _decode_table(bit) for name, bit in _BINARY_BITS.items()}
_VALID = {name: _validity_table(bit) for name, bit in _VALIDITY_BITS.items()}


def pack_flags(binary: Mapping[str, np.ndarray], validity: Mapping[str, np.ndarray]) -> np.ndarray:
    """Pack binary label maps and validity masks into one byte per pixel.

    Args:
        binary: Some of ``sal``, ``edge``: ``uint8 (H, W)`` with values in {0, 1, 255}.
        validity: Optionally ``normals``: ``bool (H, W)``.

    Returns:
        ``uint8 (H, W)``; never 255 (that value is kept for ignore-padded borders).
    """
    shape = next(iter({**binary, **validity}.values())).shape
    flags = np.zeros(shape, np.uint8)
    for name, label in binary.items():
        flags |= cv2.LUT(np.ascontiguousarray(label, dtype=np.uint8), _ENCODE[name])
    for name, valid in validity.items():
        flags |= np.left_shift(valid.view(np.uint8), _VALIDITY_BITS[name], dtype=np.uint8)
    return flags


def unpack_flags(
    flags: np.ndarray, binary: Sequence[str], validity: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of :func:`pack_flags`; a byte of 255 (ignore padding) decodes as ignore/invalid.

    Returns:
        ``(binary label maps uint8 (H, W), validity masks bool (H, W))``.
    """
    flags = np.ascontiguousarray(flags, dtype=np.uint8)
    labels = {name: cv2.LUT(flags, _DECODE[name]) for name in binary}
    valid = {name: cv2.LUT(flags, _VALID[name]).view(bool) for name in validity}
    return labels, valid


@dataclass(frozen=True)
class PackLayout:
    """Where :func:`pack_targets` put each target."""

    channels: tuple[str, ...]  # mask channels: label-map tasks, then possibly "flags"
    binary: tuple[str, ...]  # label maps inside the flags channel
    validity: tuple[str, ...]  # validity masks inside the flags channel


def _is_binary(label: np.ndarray) -> bool:
    """True if every value is 0, 1 or 255 (the common 0/1 maps are settled by their maximum)."""
    if label.size == 0 or label.max() <= 1:
        return True
    return not np.any((label > 1) & (label != IGNORE_INDEX))


def _zero_where_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A ``float32`` copy of ``values`` (``(H, W)`` or ``(H, W, C)``) with invalid pixels 0."""
    out = np.array(values, dtype=np.float32, copy=True)
    return fill_where_invalid(out, valid, 0.0)


def pack_targets(
    image: np.ndarray, targets: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], PackLayout]:
    """Albumentations keyword inputs for one sample.

    Args:
        image: ``uint8 (H, W, 3)``.
        targets: Raw targets (label maps ``uint8 (H, W)``; normals ``(H, W, 3)`` and depth
            ``(H, W)`` with 255.0 where invalid).

    Returns:
        ``{"image": float32 (H, W, 3), "mask"?: uint8 (H, W[, C]), "normals"?, "depth"?}`` and
        the layout for :func:`unpack_targets`.
    """
    data: dict[str, np.ndarray] = {"image": image.astype(np.float32)}
    channels: list[str] = []
    planes: list[np.ndarray] = []
    binary: dict[str, np.ndarray] = {}
    validity: dict[str, np.ndarray] = {}
    for task in LABEL_MAP_TASKS:
        if task not in targets:
            continue
        label = targets[task].astype(np.uint8, copy=False)
        if task in _BINARY_BITS and _is_binary(label):
            binary[task] = label
        else:
            channels.append(task)
            planes.append(label)
    if "normals" in targets:
        validity["normals"] = targets["normals"][..., 0] != IGNORE_INDEX
        data["normals"] = _zero_where_invalid(targets["normals"], validity["normals"])
    if "depth" in targets:
        data["depth"] = _zero_where_invalid(targets["depth"], targets["depth"] != IGNORE_INDEX)
    if binary or validity:
        channels.append("flags")
        planes.append(pack_flags(binary, validity))
    if planes:
        data["mask"] = planes[0] if len(planes) == 1 else cv2.merge(planes)
    return data, PackLayout(tuple(channels), tuple(binary), tuple(validity))


def unpack_targets(
    out: Mapping[str, np.ndarray], layout: PackLayout
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split transformed arrays back into targets.

    Returns:
        ``(targets, validity)``: label maps ``uint8 (h, w)``, normals ``float32 (h, w, 3)`` and
        depth ``float32 (h, w)`` (values at invalid pixels are meaningless), and the ``bool (h, w)``
        validity of normals and depth.
    """
    planes: dict[str, np.ndarray] = {}
    if layout.channels:
        mask = out["mask"].reshape(*out["mask"].shape[:2], len(layout.channels))
        planes = {name: mask[..., i] for i, name in enumerate(layout.channels)}
    validity: dict[str, np.ndarray] = {}
    if "flags" in planes:
        binary, validity = unpack_flags(planes.pop("flags"), layout.binary, layout.validity)
        planes.update(binary)
    targets = {task: planes[task] for task in LABEL_MAP_TASKS if task in planes}
    if "normals" in out:
        targets["normals"] = np.asarray(out["normals"], dtype=np.float32)
    if "depth" in out:
        depth = np.asarray(out["depth"], dtype=np.float32).reshape(out["image"].shape[:2])
        targets["depth"] = depth
        validity["depth"] = (depth > 0) & (depth != IGNORE_INDEX)
    return targets, validity
