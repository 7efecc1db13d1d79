"""The synthetic dataset generator: formats, determinism, learnable labels, safe writes."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image
from tool_loader import load_tool

from mtlora_vision.datasets.synthetic import ensure_synthetic_dataset, make_synthetic_dataset

SIZE = (40, 56)


make_tool = load_tool("make_synthetic_dataset")


def _digest(root):
    digest = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("s") / "p", "pascal_context", 6, 3, SIZE, 7
    )


def test_pascal_layout_and_formats(pascal):
    train = (pascal / "ImageSets/Context/train.txt").read_text().split()
    val = (pascal / "ImageSets/Context/val.txt").read_text().split()
    assert len(train) == 6
    assert len(val) == 3
    assert not set(train) & set(val)
    image_id = train[0]
    image = cv2.imread(str(pascal / "JPEGImages" / f"{image_id}.jpg"))
    assert image.shape == (*SIZE, 3)
    semseg = Image.open(pascal / "semseg/VOC12" / f"{image_id}.png")
    assert semseg.mode == "L"
    assert semseg.size == SIZE[::-1]
    assert (pascal / "semseg/pascal-context" / f"{train[3]}.png").is_file()  # the fallback folder
    normals = Image.open(pascal / "normals_distill" / f"{image_id}.png")
    assert normals.mode == "RGB"
    label_map = scipy.io.loadmat(pascal / "pascal-context/trainval" / f"{image_id}.mat")["LabelMap"]
    assert label_map.shape == SIZE
    assert label_map.max() <= 459
    objects = scipy.io.loadmat(pascal / "human_parts" / f"{image_id}.mat")["anno"][0][0][1][0]
    assert objects.dtype.names == ("class", "class_ind", "mask", "parts")
    person = next(o for o in objects if o[1][0][0] == 15)
    assert person[0][0] == "person"
    assert person[2].shape == SIZE
    assert person[3].dtype.names == ("part_name", "mask")
    assert len(person[3][0]) > 5
    # Image 1 has no person at all.
    no_person = scipy.io.loadmat(pascal / "human_parts" / f"{train[1]}.mat")["anno"][0][0][1][0]
    assert all(o[1][0][0] != 15 for o in no_person)
    meta = json.loads((pascal / "synthetic.json").read_text())
    assert meta["size"] == list(SIZE)
    assert meta["seed"] == 7


def test_labels_are_tied_to_pixels(pascal):
    # Each object class has its own colour: pixels of one VOC class cluster tightly in colour,
    # much more tightly than all pixels together.
    spreads, total = [], []
    for image_id in (pascal / "ImageSets/Context/train.txt").read_text().split():
        semseg_file = pascal / "semseg/VOC12" / f"{image_id}.png"
        if not semseg_file.is_file():
            continue
        image = cv2.imread(str(pascal / "JPEGImages" / f"{image_id}.jpg"))[..., ::-1].astype(float)
        semseg = np.asarray(Image.open(semseg_file))
        for cls in set(np.unique(semseg)) - {0, 15, 255}:
            spreads.append(image[semseg == cls].std(axis=0).mean())
        total.append(image.reshape(-1, 3).std(axis=0).mean())
    assert np.mean(spreads) < 0.6 * np.mean(total)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", "nyud", 2, 1, (24, 32), seed=1)
    b = make_synthetic_dataset(tmp_path / "b", "nyud", 2, 1, (24, 32), seed=1)
    c = make_synthetic_dataset(tmp_path / "c", "nyud", 2, 1, (24, 32), seed=2)
    assert _digest(a) == _digest(b) != _digest(c)
    assert sorted(p.name for p in a.iterdir()) == [
        "depth",
        "edge",
        "gt_sets",
        "images",
        "normals",
        "segmentation",
        "synthetic.json",
    ]
    depth = np.load(a / "depth/0000.npy")
    normals = np.load(a / "normals/0000.npy")
    assert depth.dtype == np.float32
    assert depth.shape == (24, 32)
    assert (depth == 0).any()
    norm = np.linalg.norm(normals, axis=-1)
    np.testing.assert_allclose(norm[depth > 0], 1.0, atol=1e-5)
    assert (norm[depth == 0] == 0).all()


def test_pascal_bytes_are_deterministic_for_a_seed(tmp_path):
    # The .mat files too: their header text carries no time stamp.
    a = make_synthetic_dataset(tmp_path / "a", "pascal_context", 2, 1, (24, 32), seed=1)
    b = make_synthetic_dataset(tmp_path / "b", "pascal_context", 2, 1, (24, 32), seed=1)
    c = make_synthetic_dataset(tmp_path / "c", "pascal_context", 2, 1, (24, 32), seed=2)
    assert _digest(a) == _digest(b) != _digest(c)
    header = (a / "human_parts/2008_000000.mat").read_bytes()[:116]
    assert header.startswith(b"MATLAB 5.0 MAT-file")
    assert scipy.io.whosmat(a / "human_parts/2008_000000.mat") == [("anno", (1, 1), "struct")]


def test_nyud_geometry_is_consistent():
    from mtlora_vision.datasets.synthetic.nyud import render_nyud_scene

    scene = render_nyud_scene((60, 80), np.random.default_rng(0))
    floor = scene.semseg == 2
    # The floor faces up (y points down the image), and its depth shrinks towards the bottom rows.
    floor_normals = scene.normals[floor & (scene.depth > 0)]
    assert len(floor_normals) > 50
    np.testing.assert_allclose(
        floor_normals, np.broadcast_to([0, -1, 0], floor_normals.shape), atol=1e-6
    )
    column = np.where(floor[:, 40] & (scene.depth[:, 40] > 0))[0]
    assert np.all(np.diff(scene.depth[column, 40]) < 0)


def test_invalid_settings(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'coco'"):
        make_synthetic_dataset(tmp_path / "x", "coco")
    with pytest.raises(ValueError, match="size"):
        make_synthetic_dataset(tmp_path / "x", "nyud", size=(8, 8))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        make_synthetic_dataset(tmp_path / "full", "nyud")


def _ensure(root):
    ensure_synthetic_dataset(root, "pascal_context", 3, 1, (32, 32), seed=4)


def test_ensure_is_atomic_and_safe_for_two_processes(tmp_path):
    root = tmp_path / "demo"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_ensure, args=(root,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert all(w.exitcode == 0 for w in workers)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".demo.lock")) == [
        "demo"
    ]
    digest = _digest(root)
    _ensure(root)  # exists: nothing is rewritten
    assert _digest(root) == digest
    assert len(list((root / "JPEGImages").iterdir())) == 4


def test_ensure_logs_the_final_folder_once(tmp_path, caplog):
    # The data is written to a temporary folder and renamed: the log names where it ends up.
    root = tmp_path / "demo"
    with caplog.at_level(logging.INFO, logger="mtlora_vision.datasets.synthetic"):
        _ensure(root)
        _ensure(root)  # exists: nothing written, nothing logged
    written = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Wrote")]
    expected = f"Wrote synthetic pascal_context dataset (3 train, 1 val, (32, 32)) to {root}."
    assert written == [expected]


def test_command_line_tool(tmp_path, capsys):
    argv = [str(tmp_path / "cli"), "--dataset", "nyud", "--num-train", "1", "--num-val", "1"]
    out = make_tool.main([*argv, "--size", "24", "32", "--seed", "9"])
    assert (out / "gt_sets/val.txt").read_text() == "0001\n"
    assert "wrote nyud" in capsys.readouterr().out
    meta = json.loads((out / "synthetic.json").read_text())
    assert (meta["size"], meta["seed"], meta["num_train"]) == ([24, 32], 9, 1)
    assert cv2.imread(str(out / "images/0000.jpg")).shape == (24, 32, 3)
