"""Two Runners of one config started in the same second, in one process, keep their own logs."""

from __future__ import annotations

import time

import torch
from engine_utils import square_loss_model
from torch.utils.data import Dataset

from mtlora_vision.engine.runner import MultiTaskRunner, unused_instance_name


class _Data(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"inputs": torch.full((4,), float(index))}


def _runner(work_dir) -> MultiTaskRunner:
    return MultiTaskRunner(
        model=square_loss_model(),
        work_dir=str(work_dir),
        experiment_name="same_config",
        train_dataloader=dict(
            dataset=_Data(),
            batch_size=2,
            sampler=dict(type="DefaultSampler", shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type=torch.optim.SGD, lr=0.1)),
        default_hooks=dict(checkpoint=None),
        default_scope=None,
    )


def test_same_second_runners_get_their_own_logger_hub_and_log_file(tmp_path, monkeypatch):
    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)  # both Runners in the same second
    first, second = _runner(tmp_path / "a"), _runner(tmp_path / "b")
    monkeypatch.undo()
    assert first.timestamp == second.timestamp
    assert first.experiment_name != second.experiment_name
    assert second.experiment_name == f"{first.experiment_name}_2"
    assert first.logger is not second.logger
    assert first.message_hub is not second.message_hub
    second.logger.info("written by the second run")
    first_log = next((tmp_path / "a").glob("*/*.log")).read_text()
    second_log = next((tmp_path / "b").glob("*/*.log")).read_text()
    assert "written by the second run" in second_log
    assert "written by the second run" not in first_log
    assert unused_instance_name("never_used_name") == "never_used_name"
