"""Pure label decoding: human parts, the normals mask, edges, saliency and the NYUD conventions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from skimage.morphology import thin

from mtlora_vision.datasets.class_info import (
    HUMAN_PART_GROUPS,
    context_class_ids,
    load_db_info,
    normals_valid_context_ids,
    normals_valid_lookup,
    person_part_names,
)
from mtlora_vision.datasets.labels import (
    binarize_edge,
    binarize_saliency,
    decode_human_parts,
    decode_normals_png,
    decode_nyud_semseg,
    depth_with_ignore,
    edges_from_label_map,
    has_annotated_person,
    mask_normals,
    normals_with_ignore,
)
from mtlora_vision.datasets.readers import (
    CorruptFileError,
    SizeMismatchError,
    check_label_map,
    check_label_values,
)
from mtlora_vision.datasets.synthetic.pascal import SceneObject, write_anno_mat


def _load_anno(tmp_path, objects, name="x"):
    path = tmp_path / f"{name}.mat"
    write_anno_mat(path, name, objects)
    return scipy.io.loadmat(path)["anno"], path


def _box(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_person_part_groups_cover_the_24_pascal_part_names():
    assert set(HUMAN_PART_GROUPS) == person_part_names()
    assert len(person_part_names()) == 24
    # Spot checks against docs/data.md#file-formats.
    expected = {"hair": 1, "mouth": 1, "neck": 2, "torso": 2, "luarm": 3, "rhand": 4, "llarm": 4}
    expected |= {"ruleg": 5, "lfoot": 6, "rlleg": 6}
    assert {k: HUMAN_PART_GROUPS[k] for k in expected} == expected


def test_human_parts_from_hand_built_mat(tmp_path):
    shape = (6, 8)
    head, neck = _box(shape, (0, 2), (2, 4)), _box(shape, (2, 3), (2, 4))
    torso, luarm, lhand = (
        _box(shape, (3, 5), (2, 5)),
        _box(shape, (3, 4), (5, 6)),
        _box(shape, (4, 5), (5, 6)),
    )
    ruleg, rfoot = _box(shape, (5, 6), (2, 3)), _box(shape, (5, 6), (3, 4))
    parts = [("head", head), ("neck", neck), ("torso", torso), ("luarm", luarm), ("lhand", lhand)]
    parts += [("ruleg", ruleg), ("rfoot", rfoot)]
    person = SceneObject("person", 15, np.any([m for _, m in parts], axis=0), parts)
    # A cat with parts and a person without parts must not contribute.
    cat = SceneObject(
        "cat", 8, _box(shape, (0, 3), (6, 8)), [("head", _box(shape, (0, 1), (6, 8)))]
    )
    bare = SceneObject("person", 15, _box(shape, (0, 2), (0, 2)))
    anno, path = _load_anno(tmp_path, [cat, person, bare])
    objects = scipy.io.loadmat(path)["anno"][0][0][1][0]
    assert objects.dtype.names == ("class", "class_ind", "mask", "parts")
    assert objects[1][3][0][0][0][0] == "head"

    labels = decode_human_parts(anno, shape)
    expected = np.array(
        [
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 0, 2, 2, 0, 0, 0, 0],
            [0, 0, 2, 2, 2, 3, 0, 0],
            [0, 0, 2, 2, 2, 4, 0, 0],
            [0, 0, 5, 6, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(labels, expected)
    assert has_annotated_person(anno)


def test_image_without_annotated_person_is_all_ignore(tmp_path):
    shape = (4, 5)
    bare = SceneObject("person", 15, _box(shape, (0, 2), (0, 2)))  # a person, but no parts
    cat = SceneObject(
        "cat", 8, _box(shape, (1, 3), (1, 4)), [("torso", _box(shape, (1, 3), (1, 4)))]
    )
    anno, _ = _load_anno(tmp_path, [bare, cat])
    assert not has_annotated_person(anno)
    np.testing.assert_array_equal(decode_human_parts(anno, shape), np.full(shape, 255, np.uint8))


def test_human_parts_errors_name_the_file(tmp_path):
    shape = (4, 5)
    person = SceneObject(
        "person", 15, _box(shape, (0, 2), (0, 2)), [("tail", _box(shape, (0, 1), (0, 1)))]
    )
    anno, path = _load_anno(tmp_path, [person], "badname")
    with pytest.raises(ValueError, match=r"badname\.mat.*unknown person part name 'tail'"):
        decode_human_parts(anno, shape, source=str(path))
    person = SceneObject(
        "person", 15, _box(shape, (0, 2), (0, 2)), [("head", np.ones((3, 3), bool))]
    )
    anno, path = _load_anno(tmp_path, [person], "badsize")
    with pytest.raises(SizeMismatchError, match=r"badsize\.mat.*\(3, 3\)"):
        decode_human_parts(anno, shape, source=str(path))


def test_normals_valid_classes_are_the_170():
    valid = normals_valid_context_ids()
    assert len(valid) == 170
    context = context_class_ids()
    nyu = load_db_info("nyu_classes.json")
    assert context["tvmonitor"] in valid
    assert "tvmonitor" not in nyu
    assert context["unknown"] not in valid
    assert context["wall"] in valid
    assert context["sky"] not in valid
    assert normals_valid_lookup().sum() == 170
    assert not normals_valid_lookup()[0]


def test_mask_normals_keeps_only_valid_classes():
    context = context_class_ids()
    label_map = np.array([[context["wall"], context["sky"]], [0, 9999]], np.uint16)
    rgb = np.array([[[255, 0, 128], [10, 20, 30]], [[1, 2, 3], [4, 5, 6]]], np.uint8)
    normals = mask_normals(decode_normals_png(rgb), label_map, normals_valid_lookup())
    np.testing.assert_allclose(normals[0, 0], [1.0, -1.0, 2 * 128 / 255 - 1], atol=1e-6)
    assert (normals[0, 1] == 255).all()
    assert (normals[1] == 255).all()
    signed = mask_normals(
        decode_normals_png(rgb), np.array([[-1, 440], [0, 0]]), normals_valid_lookup()
    )
    assert (signed[0, 0] == 255).all()
    assert (signed[0, 1] != 255).all()


def _reference_edges(label_map):
    """|4-neighbour Laplacian| > 0 with a reflect-101 border, computed with NumPy, then thinned."""
    lm = np.pad(label_map.astype(np.float64), 1, mode="reflect")
    lap = lm[:-2, 1:-1] + lm[2:, 1:-1] + lm[1:-1, :-2] + lm[1:-1, 2:] - 4 * lm[1:-1, 1:-1]
    return thin(np.abs(lap) > 0).astype(np.uint8)


def test_edges_match_an_independent_laplacian():
    rng = np.random.default_rng(1)
    label_map = np.full((30, 40), 440, np.uint16)
    label_map[5:20, 8:25] = 284
    label_map[12:28, 20:38] = 59
    label_map[rng.integers(0, 30, 20), rng.integers(0, 40, 20)] = 7
    edges = edges_from_label_map(label_map)
    np.testing.assert_array_equal(edges, _reference_edges(label_map))
    assert set(np.unique(edges)) == {0, 1}
    flat = np.full((10, 10), 3, np.uint16)
    assert edges_from_label_map(flat).sum() == 0


def test_saliency_and_edge_binarisation():
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    np.testing.assert_array_equal(binarize_saliency(gray), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(binarize_edge(np.array([[0.0, 1.0]])), [[0, 1]])
    np.testing.assert_array_equal(
        binarize_edge(np.array([[0, 100, 200, 255]], np.uint8)), [[0, 0, 1, 1]]
    )


def test_nyud_conventions():
    raw = np.array([[0, 1, 40]], np.uint8)
    np.testing.assert_array_equal(decode_nyud_semseg(raw), [[255, 0, 39]])
    with pytest.raises(ValueError, match=r"0\.\.40"):
        decode_nyud_semseg(np.array([[41]], np.uint8))
    depth = depth_with_ignore(np.array([[0.0, 2.5, np.nan]], np.float32))
    np.testing.assert_array_equal(depth, [[255.0, 2.5, 255.0]])
    normals = normals_with_ignore(np.array([[[0, 0, 0], [0, 0.6, 0.8]]], np.float32))
    np.testing.assert_allclose(normals, [[[255, 255, 255], [0, 0.6, 0.8]]], atol=1e-6)
    grey = decode_normals_png(np.full((1, 1, 3), 127, np.uint8))
    assert (normals_with_ignore(grey, min_norm=0.5) == 255).all()


def test_malformed_anno_structs_are_errors_naming_the_file(tmp_path):
    shape = (4, 5)
    not_a_struct = np.zeros((1, 1))
    with pytest.raises(CorruptFileError, match=r"f\.mat: `anno` is a float64 array"):
        has_annotated_person(not_a_struct, source="f.mat")
    obj = np.zeros((1, 1), dtype=[("class", object), ("class_ind", object), ("mask", object)])
    obj[0, 0] = (np.array(["person"]), np.array([[15]]), np.ones(shape, np.uint8))
    anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = (np.array(["x"]), obj)
    with pytest.raises(CorruptFileError, match=r"g\.mat: a struct has no field 'parts'"):
        decode_human_parts(anno, shape, source="g.mat")
    obj[0, 0] = (np.array(["person"]), np.zeros((0, 0)), np.ones(shape, np.uint8))
    with pytest.raises(CorruptFileError, match=r"h\.mat: field 'class_ind' is empty"):
        has_annotated_person(anno, source="h.mat")


def test_label_value_and_label_map_checks():
    check_label_values("ok.png", np.array([[0, 20, 255]], np.uint8), 21)
    with pytest.raises(CorruptFileError, match=r"bad\.png.*\[21, 254\] outside 0\.\.20"):
        check_label_values("bad.png", np.array([[0, 21, 254, 255]], np.uint8), 21)
    ids = np.array([[1, 459]], np.uint16)
    assert check_label_map("a.mat", ids) is ids
    np.testing.assert_array_equal(check_label_map("b.mat", ids.astype(float)), ids)
    for bad in (np.array([[1.5]]), np.array([[-1]]), np.array([[np.nan]]), np.zeros((2, 2, 1))):
        with pytest.raises(CorruptFileError, match=r"c\.mat"):
            check_label_map("c.mat", bad)


def test_byte_decoders_equal_their_formulas_for_every_value():
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], values], -1)[None]  # (1, 256, 3)
    expected = rgb.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    np.testing.assert_array_equal(decode_normals_png(rgb), expected)
    np.testing.assert_allclose(decode_normals_png(rgb), 2.0 * rgb / 255.0 - 1, atol=1e-6)
    gray = values[None]
    np.testing.assert_array_equal(binarize_saliency(gray), (gray / 255.0 > 0.5).astype(np.uint8))
