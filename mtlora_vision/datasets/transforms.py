"""Joint geometric augmentation of an image and its dense multi-task targets (albumentations 2.0).

The official PASCAL-Context train pipeline of ASTMT / MTI-Net / MTLoRA (``docs/data.md#pipeline``):
horizontal flip (p=0.5, normals x negated), scale U(0.75, 1.25) and rotation U(-20, 20) degrees
about the image centre with the same output size (normals rotated in-plane), a fixed resize that
ignores the aspect ratio (cubic for image and normals, renormalised; nearest for label maps),
ImageNet normalisation. Validation: the fixed resize only. One albumentations call moves the image,
the normals (an extra image target), the stacked label maps (nearest) and the depth (nearest)
together; only the vector fix-ups of the normals are done here, from the applied matrix.

Ignore handling (see ``target_packing.py``): the validity of normals travels as a nearest-
interpolated bit and is re-applied afterwards, and depth carries its own validity, so a 255 never
bleeds into valid values and ignore pixels stay exactly ignore. Borders exposed by rotation or
zoom-out are background (0) for label maps, as in the official code, or ignore (255) with
``pad_labels_with_ignore``; for normals and depth they are always invalid.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from mtlora_vision.datasets.masking import fill_where_invalid
from mtlora_vision.datasets.normals import finalize_normals, rotate_normals, rotation_from_affine
from mtlora_vision.datasets.target_packing import LABEL_MAP_TASKS, pack_targets, unpack_targets
from mtlora_vision.tasks import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_KNOWN_TASKS = (*LABEL_MAP_TASKS, "normals", "depth")


def to_input_tensor(image: np.ndarray) -> Tensor:
    """Turn an RGB image on the 0..255 scale into the ImageNet-normalised network input.

    The image is clipped to [0, 255] before the cast to ``uint8``: the official pipeline casts the
    cubic-interpolated float image straight to ``uint8``, so overshoots wrap around (e.g. 256 -> 0,
    -1 -> 255, a bug); the truncating cast itself is kept.

    Args:
        image: ``(H, W, 3)`` float or ``uint8``.

    Returns:
        ``float32 (3, H, W)``.
    """
    if image.dtype != np.uint8:
        image = np.clip(image, 0.0, 255.0).astype(np.uint8)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    inputs = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    return inputs.div_(255.0).sub_(mean).div_(std)


def ignore_empty_human_parts(parts: np.ndarray) -> np.ndarray:
    """A human-parts map without any part pixel (1..6) is all ignore (official AddIgnoreRegions)."""
    has_part = np.any((parts > 0) & (parts != IGNORE_INDEX))
    return parts if has_part else np.full_like(parts, IGNORE_INDEX)


def _check_ranges(
    flip_prob: float,
    scale_range: Sequence[float],
    scale_choices: Sequence[float] | None,
    rotate_range: Sequence[float],
) -> None:
    """Raise ``ValueError`` naming the first invalid augmentation setting."""
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}.")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(
            f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}."
        )
    if scale_choices is not None and not all(s > 0 for s in scale_choices):
        raise ValueError(f"scale_choices must all be positive, got {scale_choices!r}.")
    if len(rotate_range) != 2 or not rotate_range[0] <= rotate_range[1]:
        raise ValueError(
            f"rotate_range must be (low, high) degrees with low <= high, got {rotate_range!r}."
        )


class MultiTaskTransform:
    """Geometric pipeline for one sample: image plus any of the dense targets, to tensors.

    Args:
        img_size: Output ``(H, W)`` of the fixed resize.
        augment: Apply flip and scale/rotation (training); otherwise only the resize.
        flip_prob: Probability of the horizontal flip.
        scale_range: ``(low, high)`` of a uniform zoom about the centre (official: 0.75..1.25).
        scale_choices: Discrete zooms chosen uniformly instead of ``scale_range`` (MTI-Net NYUD:
            1.0, 1.2, 1.5).
        rotate_range: ``(low, high)`` degrees, counter-clockwise positive (official: -20..20).
        pad_labels_with_ignore: Fill borders exposed by the warp with 255 in label maps instead of
            the official background 0.
        resize_targets: False keeps targets at their original size (original-resolution
            evaluation; only the input is resized). Requires ``augment=False``.
        rescale_depth: Divide depth by the zoom factor (MTI-Net: zooming in by ``s`` brings the
            scene ``s`` times closer).

    Raises:
        ValueError: On an invalid size or range, or ``augment`` without ``resize_targets``.
    """

    def __init__(
        self,
        img_size: Sequence[int],
        *,
        augment: bool,
        flip_prob: float = 0.5,
        scale_range: Sequence[float] = (0.75, 1.25),
        scale_choices: Sequence[float] | None = None,
        rotate_range: Sequence[float] = (-20.0, 20.0),
        pad_labels_with_ignore: bool = False,
        resize_targets: bool = True,
        rescale_depth: bool = True,
    ) -> None:
        size = tuple(int(s) for s in img_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"img_size must be two positive ints (H, W), got {img_size!r}.")
        if augment and not resize_targets:
            raise ValueError("resize_targets=False (original-size targets) is for evaluation only.")
        _check_ranges(flip_prob, scale_range, scale_choices, rotate_range)
        self.img_size: tuple[int, int] = (size[0], size[1])
        self.augment = augment
        self.resize_targets = resize_targets
        self.rescale_depth = rescale_depth
        self.label_fill = IGNORE_INDEX if pad_labels_with_ignore else 0
        steps: list[Any] = []
        if augment:
            steps.append(A.HorizontalFlip(p=flip_prob))
            steps.append(self._scale_rotate(scale_range, scale_choices, rotate_range))
        steps.append(
            A.Resize(
                *self.img_size, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST
            )
        )
        self._compose = A.Compose(
            steps,
            additional_targets={"normals": "image", "depth": "mask"},
            save_applied_params=True,
        )

    def _scale_rotate(
        self,
        scale_range: Sequence[float],
        scale_choices: Sequence[float] | None,
        rotate_range: Sequence[float],
    ) -> Any:
        def affine(scale: float | tuple[float, float]) -> A.Affine:
            return A.Affine(
                scale=scale,
                rotate=(float(rotate_range[0]), float(rotate_range[1])),
                keep_ratio=True,
                interpolation=cv2.INTER_CUBIC,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=self.label_fill,
                p=1.0,
            )

        if scale_choices:
            return A.OneOf([affine(float(s)) for s in scale_choices], p=1.0)
        return affine((float(scale_range[0]), float(scale_range[1])))

    def __call__(
        self, image: np.ndarray, targets: Mapping[str, np.ndarray], seed: int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Transform one sample.

        Args:
            image: ``uint8 (H, W, 3)`` RGB.
            targets: Task -> raw target at the image's size: label maps ``uint8 (H, W)`` (255
                ignore), ``normals`` ``float32 (H, W, 3)`` and ``depth`` ``float32 (H, W)`` with
                255.0 where invalid.
            seed: Seed (0 <= seed < 2**64) of this sample's random augmentation, which is then a
                pure function of it; None draws one from Python's global ``random``.

        Returns:
            ``inputs`` ``float32 (3, h, w)`` and task -> target tensor in the formats of
            ``docs/design.md`` (int64 ``(h', w')`` label maps, normals ``(3, h', w')``, depth
            ``(1, h', w')``), where ``(h', w')`` is ``img_size`` or the original size.
        """
        unknown = [t for t in targets if t not in _KNOWN_TASKS]
        if unknown:
            raise KeyError(
                f"MultiTaskTransform cannot handle targets {unknown}; known: {list(_KNOWN_TASKS)}."
            )
        if not self.resize_targets:
            resized = cv2.resize(
                image.astype(np.float32), self.img_size[::-1], interpolation=cv2.INTER_CUBIC
            )
            targets_out = _finish_targets(
                targets,
                _validity_from_markers(targets),
                flipped=False,
                matrix=None,
                rescale_depth=False,
            )
            return to_input_tensor(resized), targets_out
        data, layout = pack_targets(image, targets)
        if seed is None:
            seed = random.getrandbits(64)
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self._compose(**data)
        applied = dict(out["applied_transforms"])
        matrix = applied["Affine"]["matrix"] if "Affine" in applied else None
        unpacked, validity = unpack_targets(out, layout)
        inputs = to_input_tensor(out["image"])
        flipped = "HorizontalFlip" in applied
        targets_out = _finish_targets(
            unpacked, validity, flipped=flipped, matrix=matrix, rescale_depth=self.rescale_depth
        )
        return inputs, targets_out


def _validity_from_markers(targets: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validity of raw normals/depth, marked 255.0 where invalid."""
    validity = {}
    if "normals" in targets:
        validity["normals"] = targets["normals"][..., 0] != IGNORE_INDEX
    if "depth" in targets:
        validity["depth"] = targets["depth"] != IGNORE_INDEX
    return validity


def _finish_targets(
    targets: Mapping[str, np.ndarray],
    validity: Mapping[str, np.ndarray],
    *,
    flipped: bool,
    matrix: np.ndarray | None,
    rescale_depth: bool,
) -> dict[str, Tensor]:
    """Vector fix-ups, ignore rules and conversion to the contract's tensors.

    Args:
        targets: Task -> transformed array (label maps ``(H, W)``, normals ``(H, W, 3)``, depth
            ``(H, W)``).
        validity: ``bool (H, W)`` masks of normals and depth; other pixels become 255.0.
        flipped: Whether the image was flipped horizontally (before ``matrix``).
        matrix: Forward affine map applied to the image, or None.
        rescale_depth: Divide depth by the zoom of ``matrix``.
    """
    rotation, scale = None, 1.0
    if matrix is not None:
        rotation, scale = rotation_from_affine(matrix)
    out: dict[str, Tensor] = {}
    for task, value in targets.items():
        if task == "normals":
            planes = value.transpose(2, 0, 1)
            # The flip came first, then the rotation: one in-plane map R @ diag(-1, 1).
            in_plane = np.eye(2) if rotation is None else rotation
            if flipped:
                in_plane = in_plane @ np.diag([-1.0, 1.0])
            if rotation is not None or flipped:
                planes = rotate_normals(planes, in_plane)
            out[task] = torch.from_numpy(finalize_normals(planes, validity[task]))
        elif task == "depth":
            depth = value / np.float32(scale) if rescale_depth and scale != 1.0 else value
            depth = np.array(depth, dtype=np.float32, copy=True)
            fill_where_invalid(depth, validity[task], IGNORE_INDEX)
            out[task] = torch.from_numpy(depth)[None]
        else:
            if task == "human_parts":
                value = ignore_empty_human_parts(value)
            out[task] = torch.from_numpy(value.astype(np.int64))
    return out
