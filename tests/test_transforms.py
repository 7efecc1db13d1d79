"""The joint augmentation: normals stay consistent under flip and rotation; ignore stays ignore."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from mtlora_vision.datasets.normals import (
    finalize_normals,
    flip_normals_x,
    rotate_normals,
    rotation_from_affine,
)
from mtlora_vision.datasets.synthetic_scenes import normals_from_height
from mtlora_vision.datasets.target_packing import pack_flags, unpack_flags
from mtlora_vision.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiTaskTransform,
    ignore_empty_human_parts,
    to_input_tensor,
)


def _dome_height(shape, center, radius, amplitude):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    r2 = ((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / radius**2
    return amplitude * np.exp(-r2)


def _sample(shape=(20, 30)):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    normals = normals_from_height(_dome_height(shape, (shape[1] * 0.4, shape[0] * 0.5), 6, 8), 0)
    semseg = rng.integers(0, 21, shape).astype(np.uint8)
    return image, {"semseg": semseg, "normals": normals, "sal": (semseg > 10).astype(np.uint8)}


def _angles_deg(a, b):
    cos = np.clip(np.sum(a * b, axis=0), -1, 1)
    return np.degrees(np.arccos(cos))


def test_flip_negates_x_of_flipped_normals():
    image, targets = _sample()
    shape = image.shape[:2]
    flip = MultiTaskTransform(
        shape, augment=True, flip_prob=1.0, scale_range=(1, 1), rotate_range=(0, 0)
    )
    plain = MultiTaskTransform(shape, augment=False)
    _, flipped = flip(image, targets)
    _, original = plain(image, targets)
    expected = original["normals"].flip(-1)
    expected[0] *= -1
    torch.testing.assert_close(flipped["normals"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped["semseg"], original["semseg"].flip(-1))
    np.testing.assert_array_equal(
        flip_normals_x(np.ones((3, 1, 1), np.float32))[:, 0, 0], [-1, 1, 1]
    )


def test_rotation_by_90_degrees_by_hand():
    # Counter-clockwise by 90 degrees on screen (x right, y down): right -> up, down -> right.
    size = (9, 9)
    t = MultiTaskTransform(
        size, augment=True, flip_prob=0.0, scale_range=(1, 1), rotate_range=(90, 90)
    )
    image = np.zeros((*size, 3), np.uint8)
    ids = np.arange(81, dtype=np.uint8).reshape(size)
    right = np.zeros((*size, 3), np.float32)
    right[..., 0] = 1
    _, out = t(image, {"normals": right, "semseg": ids})
    np.testing.assert_array_equal(out["semseg"].numpy(), np.rot90(ids))
    torch.testing.assert_close(
        out["normals"][:, 4, 4], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0
    )
    down = np.zeros((*size, 3), np.float32)
    down[..., 1] = 1
    _, out = t(image, {"normals": down})
    torch.testing.assert_close(
        out["normals"][:, 2, 6], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0
    )
    # The official ScaleNRotate formula agrees: in_plane = atan2(nx, ny), nx' = sin(in_plane + r).
    in_plane = np.arctan2(1.0, 0.0) + np.pi / 2
    assert np.isclose(np.sin(in_plane), 0.0)
    assert np.isclose(np.cos(in_plane), -1.0)


def test_random_rotation_matches_normals_of_the_rotated_surface():
    shape = (64, 64)
    height = _dome_height(shape, (30, 34), 10, 12)
    normals = normals_from_height(height, 0)
    image = np.zeros((*shape, 3), np.uint8)
    t = MultiTaskTransform(
        shape, augment=True, flip_prob=0.5, scale_range=(1, 1), rotate_range=(-40, 40)
    )
    wrong_convention_errors = []
    for seed in range(3):
        random.seed(seed)
        _, out = t(image, {"normals": normals})
        random.seed(seed)  # replay the same draw to recover the applied map
        draw = random.getrandbits(64)
        t._compose.set_random_state(np.random.default_rng(draw), random.Random(draw))
        applied = dict(t._compose(image=image.astype(np.float32))["applied_transforms"])
        surface = height[:, ::-1] if "HorizontalFlip" in applied else height
        matrix = applied["Affine"]["matrix"][:2]
        rotated_height = cv2.warpAffine(
            np.ascontiguousarray(surface), matrix, shape[::-1], flags=cv2.INTER_CUBIC
        )
        expected = normals_from_height(rotated_height, 0).transpose(2, 0, 1)
        interior = (slice(None), slice(20, 44), slice(20, 44))
        angles = _angles_deg(out["normals"].numpy()[interior], expected[interior])
        assert np.median(angles) < 1.0
        assert angles.max() < 5.0
        # Rotating the vectors the other way (a y-up convention) would be clearly wrong here.
        rotation, _ = rotation_from_affine(matrix)
        flipped = (
            normals[:, ::-1] * np.array([-1, 1, 1], np.float32)
            if "HorizontalFlip" in applied
            else normals
        )
        warped = cv2.warpAffine(
            np.ascontiguousarray(flipped), matrix, shape[::-1], flags=cv2.INTER_CUBIC
        )
        wrong = rotate_normals(warped.transpose(2, 0, 1), rotation, y_down=False)
        wrong /= np.maximum(np.linalg.norm(wrong, axis=0, keepdims=True), 1e-6)
        wrong_convention_errors.append(np.median(_angles_deg(wrong[interior], expected[interior])))
    assert max(wrong_convention_errors) > 5.0


def test_rotation_helpers_against_a_hand_computed_matrix():
    theta = np.radians(30)
    matrix = 2.0 * np.array([[np.cos(theta), np.sin(theta), 5], [-np.sin(theta), np.cos(theta), 1]])
    rotation, scale = rotation_from_affine(matrix)
    assert scale == pytest.approx(2.0)
    n = np.array([1.0, 0.0, 0.5], np.float32).reshape(3, 1, 1)
    out = rotate_normals(n, rotation)[:, 0, 0]
    np.testing.assert_allclose(out, [np.cos(theta), -np.sin(theta), 0.5], atol=1e-6)
    up = rotate_normals(n, rotation, y_down=False)[:, 0, 0]
    np.testing.assert_allclose(up, [np.cos(theta), np.sin(theta), 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="mirrors"):
        rotation_from_affine(np.diag([-1.0, 1.0]))


def test_finalize_normals_renormalises_and_marks_invalid():
    normals = np.array([[3.0, 0.0, 255.0]], np.float32).T.reshape(3, 1, 1).repeat(2, axis=2)
    normals[:, 0, 1] = 0
    out = finalize_normals(normals, np.array([[True, True]]))
    np.testing.assert_allclose(out[:, 0, 0], np.array([3, 0, 255]) / np.hypot(3, 255), atol=1e-6)
    assert (out[:, 0, 1] == 255).all()


@pytest.mark.parametrize("pad_with_ignore", [False, True])
def test_padding_and_ignore_pixels(pad_with_ignore):
    shape = (40, 40)
    image = np.full((*shape, 3), 100, np.uint8)
    semseg = np.full(shape, 7, np.uint8)
    semseg[:, :8] = 255
    normals = np.zeros((*shape, 3), np.float32)
    normals[..., 2] = 1
    normals[:20] = 255.0  # top half invalid
    edge = np.zeros(shape, np.uint8)
    edge[30, :] = 1
    t = MultiTaskTransform(
        (33, 47),
        augment=True,
        flip_prob=0.0,
        scale_range=(0.6, 0.6),
        rotate_range=(0, 0),
        pad_labels_with_ignore=pad_with_ignore,
    )
    _, out = t(
        image, {"semseg": semseg, "normals": normals, "edge": edge, "sal": np.ones(shape, np.uint8)}
    )
    fill = 255 if pad_with_ignore else 0
    corner = (0, 0)
    assert out["semseg"][corner] == fill
    assert out["edge"][corner] == fill
    assert out["sal"][corner] == fill
    assert set(out["semseg"].unique().tolist()) == {7, 255, fill}
    n = out["normals"]
    invalid = (n == 255).all(dim=0)
    valid = ~invalid
    # Every pixel is either exactly ignore on all channels or a unit vector: nothing blends.
    assert ((n == 255).any(dim=0) == invalid).all()
    torch.testing.assert_close(
        n[:, valid].norm(dim=0), torch.ones(int(valid.sum())), atol=1e-5, rtol=0
    )
    assert invalid[0].all()
    assert valid[-12, 23]
    assert set(out["edge"].unique().tolist()) <= {0, 1, fill}


def test_flags_pack_roundtrip_and_padding():
    sal = np.array([[0, 1, 255, 1]], np.uint8)
    edge = np.array([[1, 0, 0, 255]], np.uint8)
    valid = np.array([[True, False, True, True]])
    flags = pack_flags({"sal": sal, "edge": edge}, {"normals": valid})
    assert flags.max() < 255
    labels, validity = unpack_flags(flags, ["sal", "edge"], ["normals"])
    np.testing.assert_array_equal(labels["sal"], sal)
    np.testing.assert_array_equal(labels["edge"], edge)
    np.testing.assert_array_equal(validity["normals"], valid)
    pad_labels, pad_valid = unpack_flags(np.array([[0, 255]], np.uint8), ["sal"], ["normals"])
    np.testing.assert_array_equal(pad_labels["sal"], [[0, 255]])
    np.testing.assert_array_equal(pad_valid["normals"], [[False, False]])


def test_input_is_clipped_not_wrapped_and_imagenet_normalised():
    image = np.array([[[256.7, -3.0, 128.0]]], np.float32)
    tensor = to_input_tensor(image)
    raw = np.array([255, 0, 128]) / 255.0
    expected = (raw - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(tensor[:, 0, 0].numpy(), expected, atol=1e-6)


def test_human_parts_without_part_pixels_become_ignore():
    np.testing.assert_array_equal(
        ignore_empty_human_parts(np.array([[0, 255]], np.uint8)), [[255, 255]]
    )
    kept = np.array([[0, 3]], np.uint8)
    assert ignore_empty_human_parts(kept) is kept


def test_depth_divided_by_zoom_and_original_size_mode():
    shape = (20, 20)
    image = np.zeros((*shape, 3), np.uint8)
    depth = np.full(shape, 3.0, np.float32)
    depth[0, 0] = 255.0
    zoom = MultiTaskTransform(
        shape, augment=True, flip_prob=0.0, scale_choices=(1.5,), rotate_range=(0, 0)
    )
    _, out = zoom(image, {"depth": depth})
    assert out["depth"].shape == (1, 20, 20)
    assert out["depth"][0, 10, 10].item() == pytest.approx(2.0)
    keep = MultiTaskTransform((8, 12), augment=False, resize_targets=False)
    inputs, out = keep(image, {"depth": depth, "semseg": np.zeros(shape, np.uint8)})
    assert inputs.shape == (3, 8, 12)
    assert out["depth"].shape == (1, 20, 20)
    assert out["depth"][0, 0, 0] == 255
    assert out["semseg"].dtype == torch.int64
    with pytest.raises(ValueError, match="evaluation only"):
        MultiTaskTransform((8, 8), augment=True, resize_targets=False)
    with pytest.raises(ValueError, match="img_size"):
        MultiTaskTransform((8,), augment=False)
