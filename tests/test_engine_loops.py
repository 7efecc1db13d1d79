"""CheckedEpochBasedTrainLoop: a split without one batch is an error; a mid-epoch resume with a
sampler that cannot skip (mmengine's DefaultSampler) warns (the exact one: test_exact_resume.py)."""

from __future__ import annotations

import pytest
import torch
from engine_utils import square_loss_model
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mtlora_vision.engine.checkpoint import register_checkpoint_io
from mtlora_vision.engine.loops import CheckedEpochBasedTrainLoop


class _Data(Dataset):
    split = "train"

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"inputs": torch.randn(4, generator=g)}


def _runner(work_dir, size: int, name: str, resume: str | None = None) -> Runner:
    return Runner(
        model=square_loss_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_Data(size),
            batch_size=2,
            drop_last=True,
            sampler=dict(type="DefaultSampler", shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(type=CheckedEpochBasedTrainLoop, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type=torch.optim.SGD, lr=0.1)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=1)),
        load_from=resume,
        resume=resume is not None,
        default_scope=None,
    )


def test_a_split_without_one_batch_stops_before_training(tmp_path):
    runner = _runner(tmp_path, size=1, name="loop_small")
    with pytest.raises(ValueError, match=r"split 'train' of _Data has 1 samples.*batch of 2"):
        runner.train()
    assert not list(tmp_path.glob("*.pth"))


def test_resuming_inside_an_epoch_with_a_default_sampler_warns_that_it_is_not_exact(tmp_path):
    register_checkpoint_io()  # the project's checkpoint loading, as tools/train.py uses it
    full, part = tmp_path / "full", tmp_path / "part"
    _runner(full, size=4, name="loop_full").train()  # iter_1.pth: in the middle of epoch 1
    _runner(part, size=4, name="loop_resumed", resume=str(full / "iter_1.pth")).train()
    log = next(part.rglob("*.log")).read_text()
    assert "Resuming at iteration 1, +1 iterations from the start of epoch 1" in log
    assert "Resuming at iteration" not in next(full.rglob("*.log")).read_text()
