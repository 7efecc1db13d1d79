"""Non-finite loss handling and the DWA epoch hook, with a real mmengine Runner on CPU."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from mtlora_vision.engine.checkpoint import load_checkpoint_safely
from mtlora_vision.engine.hooks import (
    DWAEpochHook,
    NonFiniteLossHook,
    NonFiniteWeightsError,
    describe_nonfinite,
    task_of_log_key,
)
from mtlora_vision.models.loss_weighting import DynamicWeightAverage, FixedWeighting, dwa_weights
from mtlora_vision.models.losses import NonFiniteLossError


class _Data(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"inputs": torch.randn(4, generator=g), "target": torch.randn(2, generator=g)}


class _TwoTaskModel(BaseModel):
    """Two regression "tasks"; the ``sal`` loss turns NaN on forward number ``nan_at``."""

    def __init__(self, nan_at: int | None = None, weighting: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 2)
        self.weighting = weighting
        self.nan_at = nan_at
        self.calls = 0
        self.raw_history: list[tuple[float, float]] = []

    def forward(self, inputs, target=None, mode="tensor"):
        out = self.net(inputs)
        if mode != "loss":
            return out
        self.calls += 1
        losses = {
            "semseg": ((out[:, 0] - target[:, 0]) ** 2).mean(),
            "sal": (out[:, 1] - target[:, 1]).abs().mean(),
        }
        if self.calls == self.nan_at:
            losses["sal"] = losses["sal"] * float("nan")
        self.raw_history.append((losses["semseg"].item(), losses["sal"].item()))
        if self.weighting is None:
            return {f"loss_{task}": value for task, value in losses.items()}
        return self.weighting(losses)


class _Snapshot(Hook):
    def __init__(self) -> None:
        self.states: list[dict] = []
        self.logs: list[dict] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.states.append({k: v.clone() for k, v in runner.model.state_dict().items()})
        self.logs.append({k: float(v.detach()) for k, v in (outputs or {}).items()})


def _runner(work_dir, name, model, hooks, by_epoch=False, checkpoint=None) -> Runner:
    train_cfg = dict(by_epoch=True, max_epochs=3) if by_epoch else dict(by_epoch=False, max_iters=8)
    return Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_Data(),
            batch_size=2,
            sampler=dict(type=DefaultSampler, shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type=torch.optim.AdamW, lr=0.01)),
        default_hooks=dict(checkpoint=checkpoint, logger=dict(type="LoggerHook", interval=100)),
        custom_hooks=list(hooks),
        randomness=dict(seed=0),
        default_scope=None,
    )


def test_log_key_mapping_and_description():
    assert [task_of_log_key(k) for k in ("loss_sal", "raw_semseg", "weight_edge", "loss")] == [
        "sal",
        "semseg",
        "edge",
        "total",
    ]
    values = {"loss": float("nan"), "loss_sal": torch.tensor(float("inf")), "loss_semseg": 1.0}
    assert describe_nonfinite(values) == "task(s) ['sal'] (loss=nan, loss_sal=inf)"
    assert describe_nonfinite({"loss_semseg": torch.tensor(0.5)}) is None


def test_nan_loss_stops_training_naming_the_task_and_keeps_last_good_checkpoint(tmp_path):
    # No check in the model: the optimizer steps on NaN, the hook must stop before the save.
    checkpoint = dict(type="CheckpointHook", interval=3, by_epoch=False)
    runner = _runner(
        tmp_path,
        "hooks_nan_hook",
        _TwoTaskModel(nan_at=6),
        [NonFiniteLossHook()],
        checkpoint=checkpoint,
    )
    with pytest.raises(NonFiniteLossError, match=r"iteration 6 .*\['sal'\].*iter_3\.pth"):
        runner.train()
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == ["iter_3.pth"]
    assert (tmp_path / "last_checkpoint").read_text().endswith("iter_3.pth")
    saved = load_checkpoint_safely(tmp_path / "iter_3.pth")["state_dict"]
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_check_in_loss_path_raises_before_the_optimizer_step(tmp_path):
    snapshot = _Snapshot()
    model = _TwoTaskModel(nan_at=4, weighting=FixedWeighting(("semseg", "sal")))
    runner = _runner(tmp_path, "hooks_nan_loss_path", model, [snapshot])
    with pytest.raises(NonFiniteLossError, match=r"\['sal'\]"):
        runner.train()
    assert len(snapshot.states) == 3  # iterations 1-3 completed
    for key, value in model.state_dict().items():  # no step on the NaN loss
        torch.testing.assert_close(value, snapshot.states[-1][key], rtol=0, atol=0)
    first = snapshot.logs[0]  # fixed official weights: semseg 1, sal 5
    assert first["loss"] == pytest.approx(first["raw_semseg"] + 5.0 * first["raw_sal"])


def test_nonfinite_weights_are_never_saved(tmp_path):
    hook = NonFiniteLossHook()
    torch.save({"state_dict": {}, "meta": {"epoch": 0, "iter": 2}}, tmp_path / "iter_2.pth")
    (tmp_path / "last_checkpoint").write_text("iter_2.pth")
    runner = SimpleNamespace(iter=4, work_dir=str(tmp_path))
    state = {"head.weight": torch.ones(2), "head.bias": torch.tensor([0.0, math.nan])}
    with pytest.raises(NonFiniteWeightsError, match=r"head\.bias.*iter_2\.pth\) is kept"):
        hook.before_save_checkpoint(runner, {"state_dict": state})
    hook.before_save_checkpoint(runner, {"state_dict": {"head.weight": torch.ones(2)}})


def test_dwa_epoch_hook_closes_windows_with_epoch_means(tmp_path):
    snapshot = _Snapshot()
    dwa = DynamicWeightAverage(("semseg", "sal"), temperature=2.0)
    model = _TwoTaskModel(weighting=dwa)
    runner = _runner(tmp_path, "hooks_dwa", model, [DWAEpochHook(), snapshot], by_epoch=True)
    runner.train()
    assert int(dwa.num_windows) == 3
    raw = torch.tensor(model.raw_history, dtype=torch.float64)  # 12 iterations x 2 tasks
    means = raw.reshape(3, 4, 2).mean(dim=1)
    torch.testing.assert_close(dwa.history, means[1:])
    for log in snapshot.logs[:8]:  # epochs 1 and 2 use weight 1
        assert (log["weight_semseg"], log["weight_sal"]) == (1.0, 1.0)
    expected = dwa_weights(means[1], means[0], 2.0).tolist()
    for log in snapshot.logs[8:]:
        assert [log["weight_semseg"], log["weight_sal"]] == pytest.approx(expected, rel=1e-6)
