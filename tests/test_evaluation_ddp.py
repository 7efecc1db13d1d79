"""MultiTaskMetric under real DDP: 2 gloo processes, padded sampler, gathered statistics."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.dataset import DefaultSampler

from mtlora_vision.evaluation.metrics import MultiTaskMetric

TASKS = ("semseg", "human_parts", "sal", "normals", "edge")
NUM_SAMPLES = 5  # odd: the sampler pads rank 1 with a repeat of sample 0, which must be dropped


def _sample(index: int) -> dict:
    gen = torch.Generator().manual_seed(100 + index)
    h, w = 12, 16
    semseg = torch.randint(0, 21, (h, w), generator=gen)
    parts = torch.randint(0, 7, (h, w), generator=gen)
    sal = (torch.rand(h, w, generator=gen) < 0.4).long()
    edge = (torch.rand(h, w, generator=gen) < 0.2).long()
    normals = torch.nn.functional.normalize(torch.randn(3, h, w, generator=gen), dim=0)
    noisy = torch.rand(h, w, generator=gen) < 0.5
    targets = {"semseg": semseg, "human_parts": parts, "sal": sal, "normals": normals, "edge": edge}
    pred = {
        "semseg": torch.where(noisy, semseg, (semseg + index + 1) % 21),
        "human_parts": torch.where(noisy, parts, (parts + 1) % 7),
        "sal": (0.5 * sal + 0.5 * torch.rand(h, w, generator=gen)).float(),
        "normals": normals + 0.7 * torch.randn(3, h, w, generator=gen),
        "edge": (0.6 * edge + 0.4 * torch.rand(h, w, generator=gen)).float(),
    }
    return {"id": str(index), "pred": pred, "targets": targets}


class _Indices(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, index: int) -> int:
        return index


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        indices = list(DefaultSampler(_Indices(), shuffle=False))  # rank's share, padded
        metric = MultiTaskMetric(TASKS, edge_num_thresholds=9, collect_dir=out_dir + "/collect")
        for index in indices:  # one sample per "batch"
            metric.process({}, [_sample(index)])
        values = metric.evaluate(size=NUM_SAMPLES)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"indices": indices, "metrics": values}, f)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_metrics_equal_single_process(tmp_path):
    # fork: the workers share the imported modules, so the test takes about a second
    args = (2, str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["indices"] == [0, 2, 4]
    assert ranks[1]["indices"] == [1, 3, 0]  # the padded repeat
    single = MultiTaskMetric(TASKS, edge_num_thresholds=9)
    single.process({}, [_sample(i) for i in range(NUM_SAMPLES)])
    expected = single.evaluate(size=NUM_SAMPLES)
    assert set(expected) >= {"semseg/mIoU", "sal/maxF", "normals/rmse", "edge/odsF"}
    for rank in ranks:  # every rank receives the same, complete metrics
        assert rank["metrics"] == pytest.approx(expected, rel=1e-12)
    # Without the truncation to NUM_SAMPLES the repeat of sample 0 would change the values.
    padded = MultiTaskMetric(TASKS, edge_num_thresholds=9)
    padded.process({}, [_sample(i) for i in (0, 1, 2, 3, 4, 0)])
    assert padded.evaluate(size=6)["semseg/mIoU"] != pytest.approx(expected["semseg/mIoU"])
