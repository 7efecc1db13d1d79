"""Two Runners of one config started in the same second keep their own logs and log folders."""

from __future__ import annotations

import time
import warnings

import torch
from engine_utils import square_loss_model
from torch.utils.data import Dataset

from mtlora_vision.engine import runner as runner_module
from mtlora_vision.engine.runner import MultiTaskRunner, instance_name_taken


class _Data(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"inputs": torch.full((4,), float(index))}


def _runner(work_dir, name: str = "same_config", default_scope=None) -> MultiTaskRunner:
    return MultiTaskRunner(
        model=square_loss_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_Data(),
            batch_size=2,
            sampler=dict(type="DefaultSampler", shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type=torch.optim.SGD, lr=0.1)),
        default_hooks=dict(checkpoint=None),
        default_scope=default_scope,
    )


def test_same_second_runners_get_their_own_logger_hub_scope_and_log_file(tmp_path, monkeypatch):
    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)  # both Runners in the same second
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _runner(tmp_path / "a", default_scope="mmengine")
        second = _runner(tmp_path / "b", default_scope="mmengine")
    monkeypatch.undo()
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(frozen))
    assert first.timestamp == stamp
    assert second.timestamp == f"{stamp}_2"  # passed over: the first run's experiment name
    assert second.log_dir == str(tmp_path / "b" / f"{stamp}_2")
    assert second.experiment_name == f"{first.experiment_name}_2"
    assert first.logger is not second.logger
    assert first.message_hub is not second.message_hub
    assert first.default_scope is not second.default_scope
    assert not [w for w in caught if "has been created" in str(w.message)]
    second.logger.info("written by the second run")
    first_log = next((tmp_path / "a").glob("*/*.log")).read_text()
    second_log = next((tmp_path / "b").glob("*/*.log")).read_text()
    assert "written by the second run" in second_log
    assert "written by the second run" not in first_log
    assert instance_name_taken(first.experiment_name)
    assert not instance_name_taken("never_used_name")


def test_same_second_runners_in_one_work_dir_get_their_own_log_folder(tmp_path, monkeypatch):
    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)  # both Runners in the same second
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _runner(tmp_path, "same_work_dir", default_scope="mmengine")
        second = _runner(tmp_path, "same_work_dir", default_scope="mmengine")
    monkeypatch.undo()
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(frozen))
    assert first.timestamp == stamp
    assert second.timestamp == f"{stamp}_2"
    assert first.log_dir == str(tmp_path / stamp)
    assert second.log_dir == str(tmp_path / f"{stamp}_2")
    assert first.experiment_name == f"same_work_dir_{stamp}"
    assert second.experiment_name == f"same_work_dir_{stamp}_2"
    assert first.default_scope is not second.default_scope
    assert not [w for w in caught if "has been created" in str(w.message)]
    second.logger.info("written by the second run")
    assert "written by the second run" in (tmp_path / f"{stamp}_2" / f"{stamp}_2.log").read_text()
    assert "written by the second run" not in (tmp_path / stamp / f"{stamp}.log").read_text()


def test_other_ranks_take_the_log_folder_rank_0_claimed(tmp_path, monkeypatch):
    def rank_0_says_third(tensor: torch.Tensor) -> None:
        tensor.fill_(3)  # what rank 0 broadcasts after finding <stamp> and <stamp>_2 taken

    monkeypatch.setattr(runner_module, "get_rank", lambda: 1)
    monkeypatch.setattr(runner_module, "broadcast", rank_0_says_third)
    runner = _runner(tmp_path, "other_rank")
    assert runner.timestamp.endswith("_3")
    assert runner.log_dir == str(tmp_path / runner.timestamp)
    assert runner.experiment_name == f"other_rank_{runner.timestamp}"
    folders = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert folders == [runner.timestamp]  # the folder of rank 0's name only, none claimed itself
