"""The joint augmentation: normals stay consistent under flip and rotation; ignore stays ignore."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mtlora_vision.datasets.labels import edges_from_label_map
from mtlora_vision.datasets.masking import fill_where_invalid
from mtlora_vision.datasets.normals import (
    finalize_normals,
    rotate_normals,
    rotation_from_affine,
)
from mtlora_vision.datasets.synthetic.pascal import render_pascal_scene
from mtlora_vision.datasets.synthetic.scenes import normals_from_height
from mtlora_vision.datasets.target_packing import pack_flags, unpack_flags
from mtlora_vision.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiTaskTransform,
    ignore_empty_human_parts,
    to_input_tensor,
)
from mtlora_vision.tasks import IGNORE_INDEX


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


def test_in_plane_rotation_equals_the_official_formula():
    # ASTMT's ScaleNRotate, for cv2.getRotationMatrix2D(centre, a, s): with phi = atan2(nx, ny)
    # and r = |(nx, ny)|, nx' = r sin(phi + a) and ny' = r cos(phi + a).
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(3, 5, 7)).astype(np.float32)
    for angle in (-20.0, -7.5, 13.0, 20.0):
        matrix = cv2.getRotationMatrix2D((3.0, 2.0), angle, 1.2)
        rotation, scale = rotation_from_affine(matrix)
        assert scale == pytest.approx(1.2)
        phi, r = np.arctan2(normals[0], normals[1]), np.hypot(normals[0], normals[1])
        a = np.radians(angle)
        official = np.stack([r * np.sin(phi + a), r * np.cos(phi + a), normals[2]])
        np.testing.assert_allclose(rotate_normals(normals, rotation), official, atol=1e-5)


def _height(x, y):
    """A smooth, asymmetric height field (pixels): a tilted plane and two bumps."""
    bumps = 14 * np.exp(-((x - 35) ** 2 + (y - 50) ** 2) / 180)
    return 0.3 * x - 0.2 * y + bumps + 9 * np.exp(-((x - 62) ** 2 + (y - 30) ** 2) / 120)


def _normals_of(height):
    """(-dh/dx, -dh/dy, 1) normalised, in (3, H, W): x right, y down, z towards the camera."""
    dh_dy, dh_dx = np.gradient(height)
    n = np.stack([-dh_dx, -dh_dy, np.ones_like(height)])
    return n / np.linalg.norm(n, axis=0)


def _source_coordinates(inputs, ramp_offset, ramp_step):
    """Where each output pixel came from, read back from the x/y ramps in the R and G channels."""
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    image = np.rint((inputs.numpy().transpose(1, 2, 0) * std + mean) * 255)
    return (image[..., 0] - ramp_offset) / ramp_step, (image[..., 1] - ramp_offset) / ramp_step


@pytest.mark.parametrize(("flip", "angle"), [(False, 17.0), (False, -20.0), (True, 12.0)])
def test_normals_match_the_warped_geometry(flip, angle):
    # The geometry is read from the pixels (not from the transform's matrix): the image carries
    # x and y ramps, so the source of every output pixel is known. The expected normals are those
    # of the height field resampled there; a y-up convention would be off by about 2 * angle.
    size = 96
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.stack([40 + 1.8 * xx, 40 + 1.8 * yy, np.full_like(xx, 128)], -1).astype(np.uint8)
    normals = _normals_of(_height(xx, yy)).transpose(1, 2, 0).astype(np.float32)
    t = MultiTaskTransform(
        (size, size),
        augment=True,
        flip_prob=float(flip),
        scale_range=(1, 1),
        rotate_range=(angle, angle),
    )
    inputs, out = t(image, {"normals": normals})
    src_x, src_y = _source_coordinates(inputs, 40, 1.8)
    inner = (slice(25, 71), slice(25, 71))
    design = np.stack([xx[inner].ravel(), yy[inner].ravel(), np.ones(xx[inner].size)], 1)
    fit_x = np.linalg.lstsq(design, src_x[inner].ravel(), rcond=None)[0]
    fit_y = np.linalg.lstsq(design, src_y[inner].ravel(), rcond=None)[0]
    linear = np.array([fit_x[:2], fit_y[:2]])
    assert np.linalg.det(linear) == pytest.approx(-1.0 if flip else 1.0, abs=0.01)
    px = fit_x[0] * xx + fit_x[1] * yy + fit_x[2]
    py = fit_y[0] * xx + fit_y[1] * yy + fit_y[2]
    expected = _normals_of(_height(px, py))
    got = out["normals"].numpy()
    angles = _angles_deg(got, expected)[inner]
    assert np.median(angles) < 2.5
    assert angles.max() < 10.0
    # A y-up convention rotates the vectors by R^-1 instead of R: undo R, apply R^-1.
    rotation = np.linalg.inv(linear) @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
    wrong = got.copy()
    wrong[:2] = np.einsum("ij,jhw->ihw", rotation.T @ rotation.T, got[:2])
    assert np.median(_angles_deg(wrong, expected)[inner]) > 10.0


def test_sampled_flips_scales_and_angles_follow_the_official_ranges():
    # 200 training draws of the dataset's defaults, each recovered from the pixels of a ramp image.
    size = 41
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.stack([40 + 4 * xx, 40 + 4 * yy, np.full_like(xx, 128)], -1).astype(np.uint8)
    t = MultiTaskTransform((size, size), augment=True)
    inner = (slice(13, 28), slice(13, 28))  # maps inside the image for any zoom >= 0.75
    design = np.stack([xx[inner].ravel(), yy[inner].ravel(), np.ones(xx[inner].size)], 1)
    flips, scales, angles = [], [], []
    for _ in range(200):
        inputs, _ = t(image, {})
        src_x, src_y = _source_coordinates(inputs, 40, 4)
        fit_x = np.linalg.lstsq(design, src_x[inner].ravel(), rcond=None)[0]
        fit_y = np.linalg.lstsq(design, src_y[inner].ravel(), rcond=None)[0]
        forward = np.linalg.inv(np.array([fit_x[:2], fit_y[:2]]))
        flipped = np.linalg.det(forward) < 0
        if flipped:
            forward = forward @ np.diag([-1.0, 1.0])
        flips.append(flipped)
        scales.append(np.sqrt(np.linalg.det(forward)))
        angles.append(np.degrees(np.arctan2(-forward[1, 0], forward[0, 0])))
    assert 0.35 < np.mean(flips) < 0.65
    assert 0.74 < min(scales) < 0.8
    assert 1.2 < max(scales) < 1.26
    assert -20.5 < min(angles) < -16
    assert 16 < max(angles) < 20.5


def test_train_pipeline_equals_a_direct_opencv_reimplementation():
    # Official order, written out with OpenCV: flip (normals x negated), warp about the centre
    # (cubic for image and normals, nearest for labels), the official in-plane formula, fixed
    # resize, renormalisation, ImageNet normalisation.
    scene = render_pascal_scene((60, 84), np.random.default_rng([0, 0, 0]), "annotated")
    valid = np.isin(scene.label_map, np.unique(scene.label_map)[:2])
    targets = {
        "semseg": scene.semseg,
        "human_parts": scene.human_parts,
        "sal": (scene.saliency > 127).astype(np.uint8),
        "edge": edges_from_label_map(scene.label_map),
        "normals": np.where(valid[..., None], scene.normals, 255).astype(np.float32),
    }
    for flip, angle, scale, fill in [(1, 17.0, 1.1, 0), (0, -12.0, 0.8, 0), (1, 19.5, 0.77, 255)]:
        t = MultiTaskTransform(
            (44, 52),
            augment=True,
            flip_prob=float(flip),
            scale_range=(scale, scale),
            rotate_range=(angle, angle),
            pad_labels_with_ignore=fill == 255,
        )
        inputs, out = t(scene.image, targets)
        image, normals, mask = scene.image, scene.normals.astype(np.float32), valid
        labels = {k: v for k, v in targets.items() if k != "normals"}
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
            normals = normals[:, ::-1] * np.array([-1, 1, 1], np.float32)
            labels = {k: v[:, ::-1] for k, v in labels.items()}
        h, w = scene.semseg.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)

        def warp(a, interp, value, matrix=matrix, w=w, h=h):
            return cv2.warpAffine(
                np.ascontiguousarray(a), matrix, (w, h), flags=interp, borderValue=value
            )

        image = warp(image.astype(np.float32), cv2.INTER_CUBIC, 0)
        labels = {k: warp(v, cv2.INTER_NEAREST, fill) for k, v in labels.items()}
        normals = warp(np.where(mask[..., None], normals, 0), cv2.INTER_CUBIC, 0)
        mask = warp(mask.astype(np.uint8), cv2.INTER_NEAREST, 0)
        phi = np.arctan2(normals[..., 0], normals[..., 1])
        r = np.hypot(normals[..., 0], normals[..., 1])
        a = np.radians(angle)
        normals = np.stack([r * np.sin(phi + a), r * np.cos(phi + a), normals[..., 2]], -1)

        def resize(a, interp):
            return cv2.resize(a, (52, 44), interpolation=interp)

        image = resize(image, cv2.INTER_CUBIC)
        normals = resize(normals.astype(np.float32), cv2.INTER_CUBIC)
        mask = resize(mask, cv2.INTER_NEAREST).astype(bool)
        norm = np.linalg.norm(normals, axis=-1, keepdims=True)
        mask &= norm[..., 0] > 1e-6
        normals /= np.maximum(norm, 1e-6)
        for task, label in labels.items():
            expected = resize(label, cv2.INTER_NEAREST)
            if task == "human_parts" and not ((expected > 0) & (expected < 255)).any():
                expected = np.full_like(expected, 255)
            np.testing.assert_array_equal(out[task].numpy(), expected, err_msg=task)
        got = out["normals"].numpy()
        np.testing.assert_array_equal(got[0] != 255, mask)
        np.testing.assert_allclose(got[:, mask], normals[mask].T, atol=1e-5)
        pixels = np.clip(image, 0, 255).astype(np.uint8) / 255.0
        expected_inputs = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(inputs.numpy(), expected_inputs.transpose(2, 0, 1), atol=1e-5)


def test_rotation_helpers_against_a_hand_computed_matrix():
    theta = np.radians(30)
    matrix = 2.0 * np.array([[np.cos(theta), np.sin(theta), 5], [-np.sin(theta), np.cos(theta), 1]])
    rotation, scale = rotation_from_affine(matrix)
    assert scale == pytest.approx(2.0)
    n = np.array([1.0, 0.0, 0.5], np.float32).reshape(3, 1, 1)
    out = rotate_normals(n, rotation)[:, 0, 0]
    np.testing.assert_allclose(out, [np.cos(theta), -np.sin(theta), 0.5], atol=1e-6)
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


def test_inputs_equal_the_direct_normalisation_formula_exactly():
    # The lookup table must give the very bits of ((x / 255) - mean) / std in float32.
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.equal(to_input_tensor(image), (pixels - mean) / std)


def test_fill_where_invalid_equals_np_where_bit_for_bit():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(17, 19, 3)).astype(np.float32)
    values[0, 0, 0] = -0.0
    valid = rng.random((17, 19)) > 0.4
    expected = np.where(valid[..., None], values, np.float32(255))
    for array in (values.copy(), values.copy()[:, :, :2], values.transpose(2, 0, 1).copy()[0]):
        want = expected[..., : array.shape[-1]] if array.ndim == 3 else expected[..., 0]
        got = fill_where_invalid(array, valid, 255)
        assert got is array
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    strided = values.copy()[:, ::2]  # not contiguous: the NumPy fallback
    got = fill_where_invalid(strided, valid[:, ::2], 0.0)
    np.testing.assert_array_equal(got, np.where(valid[:, ::2, None], values[:, ::2], 0))
    with pytest.raises(TypeError, match="float32"):
        fill_where_invalid(np.zeros(3), np.ones(3, bool), 0)
    with pytest.raises(ValueError, match="does not match"):
        fill_where_invalid(values.transpose(2, 0, 1).copy(), valid, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(flip_prob=1.5), "flip_prob"),
        (dict(rotate_range=(20, -20)), "rotate_range"),
        (dict(scale_range=(1.25, 0.75)), "scale_range"),
        (dict(scale_choices=(1.0, 0.0)), "scale_choices"),
    ],
)
def test_invalid_augmentation_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiTaskTransform((8, 8), augment=True, **kwargs)


def test_flags_round_trip_every_combination():
    combos = [(s, e, v) for s in (0, 1, 255) for e in (0, 1, 255) for v in (False, True)]
    sal = np.array([[c[0] for c in combos]], np.uint8)
    edge = np.array([[c[1] for c in combos]], np.uint8)
    valid = np.array([[c[2] for c in combos]])
    flags = pack_flags({"sal": sal, "edge": edge}, {"normals": valid})
    assert len(set(flags.ravel().tolist())) == len(combos)  # every combination has its own byte
    assert IGNORE_INDEX not in flags
    labels, validity = unpack_flags(flags, ["sal", "edge"], ["normals"])
    np.testing.assert_array_equal(labels["sal"], sal)
    np.testing.assert_array_equal(labels["edge"], edge)
    np.testing.assert_array_equal(validity["normals"], valid)
