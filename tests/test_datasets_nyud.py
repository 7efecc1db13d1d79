"""NYUD-v2 multi-task dataset read from the synthetic NYUD_MT layout (MTI-Net release)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mtlora_vision.datasets.nyud import NYUDMT
from mtlora_vision.datasets.readers import CorruptFileError, SizeMismatchError
from mtlora_vision.datasets.synthetic import make_synthetic_dataset
from mtlora_vision.datasets.synthetic.nyud import render_nyud_scene
from mtlora_vision.datasets.synthetic.scenes import encode_normals_png

SIZE = (36, 48)
SEED = 5


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyud") / "NYUDv2"
    return make_synthetic_dataset(root, "nyud", num_train=3, num_val=2, size=SIZE, seed=SEED)


def test_every_task_matches_what_the_generator_wrote(nyud_root):
    ds = NYUDMT(nyud_root, "val", img_size=(32, 32), keep_original_size=True)
    assert ds.ids == ["0003", "0004"]
    assert ds.tasks == ("semseg", "depth", "normals", "edge")
    for i in range(len(ds)):
        scene = render_nyud_scene(SIZE, np.random.default_rng([SEED, 1, i]))
        sample = ds[i]
        targets = sample["data_samples"]["targets"]
        assert sample["inputs"].shape == (3, 32, 32)
        assert sample["data_samples"]["ori_shape"] == SIZE
        expected_semseg = np.where(scene.semseg == 0, 255, scene.semseg.astype(np.int64) - 1)
        np.testing.assert_array_equal(targets["semseg"].numpy(), expected_semseg)
        assert (targets["semseg"] == 255).any()  # the unlabelled patch
        depth = targets["depth"].numpy()[0]
        np.testing.assert_array_equal(depth, np.where(scene.depth == 0, 255.0, scene.depth))
        normals = targets["normals"].numpy()
        missing = np.linalg.norm(scene.normals, axis=-1) == 0
        assert (normals[:, missing] == 255).all()
        np.testing.assert_allclose(normals[:, ~missing], scene.normals[~missing].T, atol=1e-6)
        np.testing.assert_array_equal(targets["edge"].numpy(), scene.edge)


def test_training_augmentation(nyud_root):
    ds = NYUDMT(nyud_root, "train", img_size=(24, 32))
    for i in range(len(ds)):
        targets = ds[i]["data_samples"]["targets"]
        assert targets["depth"].shape == (1, 24, 32)
        assert targets["semseg"].shape == (24, 32)
        depth = targets["depth"]
        assert (depth[depth != 255] > 0.3).all()
        assert (depth[depth != 255] < 7).all()
        invalid = (targets["normals"] == 255).all(0)
        torch.testing.assert_close(
            targets["normals"][:, ~invalid].norm(dim=0), torch.ones(int((~invalid).sum()))
        )


def test_png_variant_of_normals_and_edges(nyud_root, tmp_path):
    root = shutil.copytree(nyud_root, tmp_path / "png")
    for image_id in ("0003", "0004"):
        normals = np.load(root / "normals" / f"{image_id}.npy")
        cv2.imwrite(
            str(root / "normals" / f"{image_id}.png"), encode_normals_png(normals)[..., ::-1]
        )
        edge = np.load(root / "edge" / f"{image_id}.npy")
        cv2.imwrite(str(root / "edge" / f"{image_id}.png"), (edge * 255).astype(np.uint8))
        (root / "normals" / f"{image_id}.npy").unlink()
        (root / "edge" / f"{image_id}.npy").unlink()
    png = NYUDMT(root, "val", keep_original_size=True)[0]["data_samples"]["targets"]
    npy = NYUDMT(nyud_root, "val", keep_original_size=True)[0]["data_samples"]["targets"]
    torch.testing.assert_close(png["edge"], npy["edge"])
    valid = (npy["normals"] != 255).all(0)
    # PNG quantisation; missing normals stored as mid-grey become invalid again.
    assert ((png["normals"] == 255).all(0) == ~valid).all()
    torch.testing.assert_close(
        png["normals"][:, valid], npy["normals"][:, valid], atol=0.02, rtol=0
    )


def test_bad_inputs(nyud_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing_nyud.*prepare_dataset\.py nyud"):
        NYUDMT(tmp_path / "missing_nyud")
    with pytest.raises(ValueError, match=r"\['sal'\].*'semseg', 'depth', 'normals', 'edge'"):
        NYUDMT(nyud_root, tasks=["sal"])
    root = shutil.copytree(nyud_root, tmp_path / "broken")
    (root / "depth" / "0001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth/0001\.npy"):
        NYUDMT(root, "train")
    ds = NYUDMT(root, "train", tasks=["normals", "semseg"], augment=False)
    np.save(root / "normals" / "0000.npy", np.zeros((5, 5, 3), np.float32))
    with pytest.raises(SizeMismatchError, match=r"normals/0000\.npy"):
        ds[0]
    (root / "normals" / "0002.npy").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match=r"normals/0002\.npy"):
        ds[2]
    cv2.imwrite(str(root / "segmentation" / "0001.png"), np.full(SIZE, 41, np.uint8))
    with pytest.raises(CorruptFileError, match=r"segmentation/0001\.png.*0..40"):
        ds[1]
    root = shutil.copytree(nyud_root, tmp_path / "depth3")
    np.save(root / "depth" / "0000.npy", np.ones((*SIZE, 3), np.float32))
    with pytest.raises(CorruptFileError, match=r"depth/0000\.npy.*\(36, 48, 3\), expected"):
        NYUDMT(root, "train", tasks="depth", augment=False)[0]


def test_dataset_config_builds_with_cfg_options(nyud_root):
    cfg = Config.fromfile(
        str(Path(__file__).resolve().parents[1] / "configs/_base_/datasets/nyud_mt.py")
    )
    cfg.merge_from_dict(  # what --cfg-options does
        {
            "train_dataloader.dataset.data_root": str(nyud_root),
            "train_dataloader.dataset.img_size": (24, 32),
            "train_dataloader.batch_size": 2,
            "train_dataloader.num_workers": 0,
            "train_dataloader.persistent_workers": False,
            "train_dataloader.pin_memory": False,
        }
    )
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    batch = next(iter(loader))
    assert batch["inputs"].shape == (2, 3, 24, 32)
    assert batch["data_samples"][0]["targets"]["depth"].shape == (1, 24, 32)
    assert loader.dataset.metainfo["num_outputs"] == {
        "semseg": 40,
        "depth": 1,
        "normals": 3,
        "edge": 1,
    }
    assert len(cfg.val_dataloader.dataset.tasks) == 4
