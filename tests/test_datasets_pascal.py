"""PASCAL-Context multi-task dataset read from the synthetic PASCAL_MT layout."""

from __future__ import annotations

import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.runner import Runner
from skimage.morphology import thin

from mtlora_vision.datasets import worker
from mtlora_vision.datasets.class_info import normals_valid_context_ids
from mtlora_vision.datasets.collate import multitask_collate
from mtlora_vision.datasets.pascal_context import PascalContextMT
from mtlora_vision.datasets.readers import CorruptFileError, SizeMismatchError
from mtlora_vision.datasets.synthetic import make_synthetic_dataset
from mtlora_vision.datasets.synthetic.pascal import person_kind, render_pascal_scene

SIZE = (48, 64)
SEED = 3


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal") / "PASCAL_MT"
    return make_synthetic_dataset(
        root, "pascal_context", num_train=6, num_val=3, size=SIZE, seed=SEED
    )


@pytest.fixture
def pascal_copy(pascal_root, tmp_path):
    return shutil.copytree(pascal_root, tmp_path / "PASCAL_MT")


def _scene(split_index, i):
    return render_pascal_scene(SIZE, np.random.default_rng([SEED, split_index, i]), person_kind(i))


def _edges(label_map):
    lm = np.pad(label_map.astype(np.float64), 1, mode="reflect")
    lap = lm[:-2, 1:-1] + lm[2:, 1:-1] + lm[1:-1, :-2] + lm[1:-1, 2:] - 4 * lm[1:-1, 1:-1]
    return thin(np.abs(lap) > 0)


def _snapshot(root):
    return {
        (p, os.stat(os.path.join(d, p)).st_mtime_ns) for d, _, files in os.walk(root) for p in files
    }


def test_every_task_matches_what_the_generator_wrote(pascal_root, tmp_path):
    before = _snapshot(pascal_root)
    ds = PascalContextMT(
        pascal_root, "val", img_size=(32, 40), keep_original_size=True, cache_dir=tmp_path / "cache"
    )
    assert ds.ids == ["2009_000000", "2009_000001", "2009_000002"]
    valid_ids = np.array(sorted(normals_valid_context_ids()))
    for i in range(len(ds)):
        sample, scene = ds[i], _scene(1, i)
        meta, targets = sample["data_samples"], sample["data_samples"]["targets"]
        assert sample["inputs"].shape == (3, 32, 40)
        assert sample["inputs"].dtype == torch.float32
        assert meta["ori_shape"] == SIZE
        assert meta["img_shape"] == (32, 40)
        assert meta["id"] == ds.ids[i]
        assert list(targets) == ["semseg", "human_parts", "sal", "normals", "edge"]
        np.testing.assert_array_equal(targets["semseg"].numpy(), scene.semseg)
        np.testing.assert_array_equal(targets["human_parts"].numpy(), scene.human_parts)
        np.testing.assert_array_equal(targets["sal"].numpy(), scene.saliency > 127)
        np.testing.assert_array_equal(targets["edge"].numpy(), _edges(scene.label_map))
        valid = np.isin(scene.label_map, valid_ids)
        normals = targets["normals"].numpy()
        assert (normals[:, ~valid] == 255).all()
        cos = np.sum(normals[:, valid] * scene.normals[valid].T, axis=0)
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.5
        assert targets["semseg"].dtype == torch.int64
        assert targets["normals"].dtype == torch.float32
    # Image i % 3 == 1 has no person: human parts all ignore; the others have part labels.
    assert (ds[1]["data_samples"]["targets"]["human_parts"] == 255).all()
    assert ds[0]["data_samples"]["targets"]["human_parts"].max() <= 6
    assert _snapshot(pascal_root) == before  # nothing written into the dataset


def test_inputs_are_the_normalised_resized_image(pascal_root, tmp_path):
    ds = PascalContextMT(
        pascal_root, "train", tasks=["sal"], img_size=SIZE, augment=False, use_cache=False
    )
    inputs = ds[2]["inputs"]
    image = _scene(0, 2).image.astype(np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    restored = inputs.numpy().transpose(1, 2, 0) * std + mean
    assert np.abs(restored - image).mean() < 0.03  # JPEG quality 95


def test_training_samples_have_contract_formats(pascal_root, tmp_path):
    ds = PascalContextMT(pascal_root, "train", img_size=(40, 40), cache_dir=tmp_path / "cache")
    for i in range(len(ds)):
        targets = ds[i]["data_samples"]["targets"]
        assert all(t.shape[-2:] == (40, 40) for t in targets.values())
        assert set(targets["semseg"].unique().tolist()) <= set(range(21)) | {255}
        assert set(targets["human_parts"].unique().tolist()) <= set(range(7)) | {255}
        assert set(targets["sal"].unique().tolist()) <= {0, 1}
        normals = targets["normals"]
        invalid = (normals == 255).all(0)
        assert ((normals == 255).any(0) == invalid).all()
        torch.testing.assert_close(
            normals[:, ~invalid].norm(dim=0), torch.ones(int((~invalid).sum()))
        )


def test_human_parts_only_drops_images_without_persons(pascal_root, tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        ds = PascalContextMT(pascal_root, "train", tasks=["human_parts"], cache_dir=cache)
    # Images 1 and 4 have no person; image 5 has a person without part labels.
    assert ds.ids == ["2008_000000", "2008_000002", "2008_000003"]
    assert "dropped 3 of 6 train images" in caplog.text
    assert len(list(cache.glob("*/human_parts_index_train.json"))) == 1
    full = PascalContextMT(pascal_root, "train", tasks=["human_parts", "sal"], cache_dir=cache)
    assert len(full) == 6


def test_person_index_is_rebuilt_when_the_dataset_changes(pascal_copy, tmp_path):
    cache = tmp_path / "cache"
    assert len(PascalContextMT(pascal_copy, "train", tasks=["human_parts"], cache_dir=cache)) == 3
    # Replace a person image's annotation with the one of an image without persons.
    shutil.copyfile(
        pascal_copy / "human_parts/2008_000001.mat", pascal_copy / "human_parts/2008_000000.mat"
    )
    os.utime(pascal_copy / "human_parts/2008_000000.mat", ns=(1, 1))
    ds = PascalContextMT(pascal_copy, "train", tasks=["human_parts"], cache_dir=cache)
    assert ds.ids == ["2008_000002", "2008_000003"]


def test_cached_edges_follow_label_map_changes(pascal_copy, tmp_path):
    cache = tmp_path / "cache"
    ds = PascalContextMT(
        pascal_copy, "val", tasks=["edge"], keep_original_size=True, cache_dir=cache
    )
    assert ds[0]["data_samples"]["targets"]["edge"].sum() > 0
    assert len(list(cache.rglob("edge-v2/2009_000000.*.bin"))) == 1
    mat = pascal_copy / "pascal-context/trainval/2009_000000.mat"
    scipy.io.savemat(mat, {"LabelMap": np.full(SIZE, 440, np.uint16)})
    assert ds[0]["data_samples"]["targets"]["edge"].sum() == 0
    assert len(list(cache.rglob("edge-v2/2009_000000.*.bin"))) == 1  # the old entry is gone


def test_cached_labels_equal_freshly_decoded_ones(pascal_root, tmp_path):
    kwargs = dict(split="val", keep_original_size=True, tasks=["human_parts", "edge"])
    fresh = PascalContextMT(pascal_root, use_cache=False, **kwargs)
    cached = PascalContextMT(pascal_root, cache_dir=tmp_path / "cache", **kwargs)
    for i in range(len(fresh)):
        cached[i]  # fills the cache
        for task in kwargs["tasks"]:
            a = fresh[i]["data_samples"]["targets"][task]
            torch.testing.assert_close(
                cached[i]["data_samples"]["targets"][task], a, rtol=0, atol=0
            )
    entry = next((tmp_path / "cache").rglob("edge-v2/*.bin"))
    entry.write_bytes(b"damaged")
    image_id = entry.name.split(".")[0]
    index = cached.ids.index(image_id)
    torch.testing.assert_close(
        cached[index]["data_samples"]["targets"]["edge"],
        fresh[index]["data_samples"]["targets"]["edge"],
    )


def test_val_split_is_resize_only(pascal_root, tmp_path):
    ds = PascalContextMT(pascal_root, "val", img_size=(40, 56), cache_dir=tmp_path / "cache")
    first, second = ds[1], ds[1]
    assert torch.equal(first["inputs"], second["inputs"])
    scene = _scene(1, 1)
    for task, expected in (("semseg", scene.semseg), ("sal", scene.saliency > 127)):
        resized = cv2.resize(expected.astype(np.uint8), (56, 40), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(first["data_samples"]["targets"][task].numpy(), resized)


def test_missing_data_root_names_path_and_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=r"nowhere.*tools/prepare_dataset\.py pascal_context"
    ):
        PascalContextMT(missing)


def test_bad_files_name_the_file_and_what_is_wrong(pascal_copy):
    def sample(tasks, index):
        return PascalContextMT(pascal_copy, tasks=tasks, augment=False, use_cache=False)[index]

    cv2.imwrite(str(pascal_copy / "semseg/VOC12/2008_000000.png"), np.full(SIZE, 37, np.uint8))
    with pytest.raises(CorruptFileError, match=r"VOC12/2008_000000\.png.*\[37\] outside 0\.\.20"):
        sample(["semseg"], 0)
    cv2.imwrite(str(pascal_copy / "normals_distill/2008_000002.png"), np.zeros(SIZE, np.uint8))
    with pytest.raises(CorruptFileError, match=r"normals_distill/2008_000002\.png.*1 channel"):
        sample(["normals"], 2)
    scipy.io.savemat(
        pascal_copy / "human_parts/2008_000003.mat",
        {"anno": np.zeros((1, 1), dtype=[("imname", object)])},
    )
    with pytest.raises(CorruptFileError, match=r"2008_000003\.mat.*no field 'objects'"):
        sample(["human_parts"], 3)
    with pytest.raises(CorruptFileError, match=r"2008_000003\.mat.*no field 'objects'"):
        PascalContextMT(pascal_copy, tasks=["human_parts"], use_cache=False)
    label_maps = pascal_copy / "pascal-context/trainval"
    scipy.io.savemat(label_maps / "2008_000004.mat", {"LabelMap": np.zeros((*SIZE, 2))})
    with pytest.raises(CorruptFileError, match=r"2008_000004\.mat.*shape \(48, 64, 2\)"):
        sample(["edge"], 4)
    scipy.io.savemat(label_maps / "2008_000005.mat", {"Other": np.zeros(SIZE)})
    with pytest.raises(CorruptFileError, match=r"2008_000005\.mat.*no variable 'LabelMap'"):
        sample(["normals"], 5)
    # Integral floats are valid ids.
    scipy.io.savemat(label_maps / "2008_000001.mat", {"LabelMap": np.full(SIZE, 440.0)})
    assert (sample(["edge"], 1)["data_samples"]["targets"]["edge"] == 0).all()


def test_single_task_as_a_string(pascal_root):
    ds = PascalContextMT(pascal_root, "val", tasks="sal", use_cache=False)
    assert ds.tasks == ("sal",)
    with pytest.raises(NotADirectoryError, match=r"train\.txt.*is a file"):
        PascalContextMT(pascal_root / "ImageSets/Context/train.txt")


def test_unknown_task_and_split(pascal_root):
    with pytest.raises(
        ValueError, match=r"\['depth'\].*'semseg', 'human_parts', 'sal', 'normals', 'edge'"
    ):
        PascalContextMT(pascal_root, tasks=["semseg", "depth"])
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*\['train', 'val'\]"):
        PascalContextMT(pascal_root, split="test")


def test_missing_corrupt_and_missized_files_are_named(pascal_copy, tmp_path):
    (pascal_copy / "sal_distill/2008_000003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 dataset file.*sal_distill/2008_000003\.png"):
        PascalContextMT(pascal_copy, tasks=["sal"], use_cache=False)
    ds = PascalContextMT(pascal_copy, tasks=["semseg", "normals"], augment=False, use_cache=False)
    (pascal_copy / "JPEGImages/2008_000000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptFileError, match=r"JPEGImages/2008_000000\.jpg"):
        ds[0]
    jpeg = (pascal_copy / "JPEGImages/2008_000002.jpg").read_bytes()
    (pascal_copy / "JPEGImages/2008_000002.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(CorruptFileError, match=r"2008_000002\.jpg.*truncated"):
        ds[2]
    (pascal_copy / "pascal-context/trainval/2008_000003.mat").write_bytes(b"\x00" * 300)
    with pytest.raises(CorruptFileError, match=r"trainval/2008_000003\.mat"):
        ds[3]
    cv2.imwrite(str(pascal_copy / "semseg/VOC12/2008_000004.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(SizeMismatchError, match=r"VOC12/2008_000004\.png.*\(10, 10\).*\(48, 64\)"):
        ds[4]


def test_mmengine_builds_the_loader_with_cfg_options(pascal_root, tmp_path):
    cfg = Config(
        dict(
            train_dataloader=dict(
                batch_size=2,
                num_workers=1,
                sampler=dict(type=DefaultSampler, shuffle=True),
                collate_fn=dict(type=multitask_collate),
                dataset=dict(
                    type=PascalContextMT,
                    data_root="data/PASCAL_MT",
                    split="train",
                    img_size=(32, 32),
                    cache_dir=str(tmp_path / "cache"),
                ),
            )
        )
    )
    cfg.merge_from_dict({"train_dataloader.dataset.data_root": str(pascal_root)})  # --cfg-options
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    batch = next(iter(loader))
    assert batch["inputs"].shape == (2, 3, 32, 32)
    assert len(batch["data_samples"]) == 2
    assert batch["data_samples"][0]["targets"]["normals"].shape == (3, 32, 32)
    assert loader.dataset.metainfo["num_outputs"]["human_parts"] == 7


def test_synthesize_if_missing_writes_the_dataset(tmp_path, caplog):
    root = tmp_path / "demo"
    ds = PascalContextMT(
        root,
        "val",
        img_size=(32, 32),
        use_cache=False,
        synthesize_if_missing=dict(root=root, num_train=2, num_val=2, size=(32, 40), seed=1),
    )
    assert len(ds) == 2
    assert (root / "JPEGImages").is_dir()
    assert ds.is_synthetic  # the start-up summary says so
    assert ds.synthetic_written
    again = PascalContextMT(root, "val", use_cache=False, synthesize_if_missing=dict(root=root))
    assert again.is_synthetic
    assert not again.synthetic_written  # found, not written
    assert "split 'val' at" in caplog.text
    assert "is synthetic data (2 images; its settings in" in caplog.text
    caplog.clear()
    (root / "synthetic.json").unlink()  # what tells synthetic data from a release
    assert not PascalContextMT(root, "val", use_cache=False).is_synthetic
    assert "has 2 images, the PASCAL_MT release 5105: a subset or other data" in caplog.text
    # Anywhere else (e.g. a mistyped data_root) nothing is written: an error with the commands.
    typo = tmp_path / "demo_typo"
    with pytest.raises(FileNotFoundError, match=r"demo_typo.*prepare_dataset\.py.*only at"):
        PascalContextMT(typo, "val", synthesize_if_missing=dict(root=root, num_train=2))
    assert not typo.exists()
    with pytest.raises(ValueError, match="needs 'root'"):
        PascalContextMT(typo, "val", synthesize_if_missing=dict(num_train=2))
    with pytest.raises(ValueError, match="Unknown synthesize_if_missing keys"):
        PascalContextMT(tmp_path / "other", synthesize_if_missing=dict(images=3))


def test_loader_workers_return_what_the_main_process_returns(pascal_root, tmp_path):
    # Workers run with their own settings (single-threaded OpenCV, malloc thresholds); values
    # must not change. The val split has no randomness, so samples compare one to one.
    ds = PascalContextMT(pascal_root, "val", img_size=(40, 40), cache_dir=tmp_path / "cache")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=1, collate_fn=multitask_collate
    )
    for i, batch in enumerate(loader):
        sample = ds[i]
        assert torch.equal(batch["inputs"][0], sample["inputs"])
        for task, target in sample["data_samples"]["targets"].items():
            assert torch.equal(batch["data_samples"][0]["targets"][task], target), task


def test_worker_settings_apply_only_inside_workers(monkeypatch):
    applied = []
    monkeypatch.setattr(worker, "_configured_pid", None)
    monkeypatch.setattr(worker, "tune_cpu_allocator", lambda: applied.append(1) or True)
    worker.configure_data_worker()  # the main process: left alone
    assert applied == []
    worker.configure_data_worker(force=True)
    worker.configure_data_worker(force=True)  # once per process
    assert applied == [1]
