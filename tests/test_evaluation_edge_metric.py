"""MultiTaskMetric's edge protocols and pooled saliency F-beta; SEISM labels of the dataset."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from mtlora_vision.datasets.pascal_context import PascalContextMT
from mtlora_vision.datasets.synthetic import make_synthetic_dataset
from mtlora_vision.evaluation.functional.boundary import (
    average_precision,
    boundary_pr_counts,
    bsds_precision_recall,
    ods_f,
    ois_f,
)
from mtlora_vision.evaluation.functional.seism import (
    seism_gt_boundaries,
    seism_ods,
    seism_pr_counts,
    seism_precision_recall,
)
from mtlora_vision.evaluation.metrics import MultiTaskMetric


def _edge_samples(count: int, size=(40, 48)) -> list[dict]:
    rng = np.random.default_rng(11)
    samples = []
    for _ in range(count):
        labels = rng.integers(0, 3, size=(5, 6)).repeat(8, axis=0).repeat(8, axis=1)
        gt = seism_gt_boundaries(labels[: size[0], : size[1]])
        prob = np.clip(np.roll(gt, 1, axis=0) * 0.7 + rng.random(gt.shape) * 0.35, 0, 1)
        samples.append(
            {
                "pred": {"edge": torch.from_numpy(prob.astype(np.float32))[None]},
                "targets": {"edge": torch.from_numpy(gt.astype(np.int64))[None]},
            }
        )
    return samples


def _run(metric: MultiTaskMetric, samples: list[dict]) -> dict[str, float]:
    metric.process({}, samples[:3])
    metric.process({}, samples[3:])
    return metric.compute_metrics(metric.results)


def _pairs(samples):
    return [(s["pred"]["edge"][0], s["targets"]["edge"][0]) for s in samples]


def test_seism_scores_equal_the_pure_functions():
    samples = _edge_samples(5)
    values = _run(MultiTaskMetric(["edge"], dataset=None), samples)
    per_image = np.stack([seism_pr_counts(p, t, 0.0075).numpy() for p, t in _pairs(samples)])
    total = per_image.sum(axis=0)
    assert values["edge/odsF"] == pytest.approx(100 * seism_ods(total))
    assert values["edge/oisF"] == pytest.approx(100 * ois_f(per_image, seism_precision_recall))
    assert values["edge/AP"] == pytest.approx(
        100 * average_precision(*seism_precision_recall(total))
    )
    assert values["edge/oisF"] >= values["edge/odsF"]


def test_bsds_protocol_is_the_previous_metric():
    samples = _edge_samples(5)
    values = _run(MultiTaskMetric(["edge"], dataset="nyud", edge_protocol="bsds"), samples)
    per_image = np.stack([boundary_pr_counts(p, t, 0.011).numpy() for p, t in _pairs(samples)])
    total = per_image.sum(axis=0)
    assert values["edge/odsF"] == pytest.approx(100 * ods_f(torch.from_numpy(total)))
    assert values["edge/oisF"] == pytest.approx(100 * ois_f(per_image))
    assert values["edge/AP"] == pytest.approx(
        100 * average_precision(*bsds_precision_recall(total))
    )


def test_worker_processes_give_identical_results():
    samples = _edge_samples(6)
    for protocol in ("seism", "bsds"):
        alone = _run(MultiTaskMetric(["edge"], dataset=None, edge_protocol=protocol), samples)
        pooled_metric = MultiTaskMetric(
            ["edge"], dataset=None, edge_protocol=protocol, edge_workers=2
        )
        pooled = _run(pooled_metric, samples)
        assert pooled == alone  # bit for bit


def test_bad_protocol_and_workers_are_refused():
    with pytest.raises(ValueError, match="edge_protocol='matlab'"):
        MultiTaskMetric(["edge"], edge_protocol="matlab")
    with pytest.raises(ValueError, match="edge_workers=-1"):
        MultiTaskMetric(["edge"], edge_workers=-1)


def test_pooled_saliency_fbeta_by_hand():
    def sample(prob, target):
        return {
            "pred": {"sal": torch.tensor(prob, dtype=torch.float32)[None]},
            "targets": {"sal": torch.tensor(target)[None]},
        }

    # levels 255, 153, 51, 0 and 153, 153; salient pixels: 3 in all
    samples = [
        sample([[1.0, 0.6], [0.2, 0.0]], [[1, 1], [0, 0]]),
        sample([[0.6, 0.6]], [[0, 1]]),
    ]
    metric = MultiTaskMetric(["sal"], dataset=None, sal_fbeta=True)
    metric.process({}, samples)
    values = metric.compute_metrics(metric.results)
    # levels >= 1..51: P 3/5, R 1 -> F 0.661; >= 52..153: P 3/4, R 1 -> F 39/49;
    # >= 154..255: P 1, R 1/3 -> F 0.684
    assert values["sal/maxFbeta"] == pytest.approx(100 * 39 / 49)


def test_dataset_gives_seism_ground_truth(tmp_path):
    size = (24, 32)
    root = make_synthetic_dataset(
        tmp_path / "PASCAL_MT", "pascal_context", num_train=1, num_val=2, size=size, seed=5
    )
    mat = root / "pascal-context/trainval/2009_000000.mat"
    labels = scipy.io.loadmat(mat)["LabelMap"]
    for edge_labels, kind in (("seg2bmap", "edge-seg2bmap"), ("laplacian", "edge")):
        ds = PascalContextMT(
            root,
            "val",
            tasks=["edge"],
            keep_original_size=True,
            cache_dir=tmp_path / "cache",
            edge_labels=edge_labels,
        )
        edge = ds[0]["data_samples"]["targets"]["edge"].numpy().reshape(size)
        if edge_labels == "seg2bmap":
            np.testing.assert_array_equal(edge, seism_gt_boundaries(labels))
        assert list((tmp_path / "cache").rglob(f"{kind}-v*/2009_000000.*.bin"))
    with pytest.raises(ValueError, match="edge_labels='sobel'"):
        PascalContextMT(root, "val", tasks=["edge"], edge_labels="sobel")
