"""Checkpoint I/O: atomic writes, trainable-only state dicts, Runner resume (safe loading:
test_checkpoint_loading.py)."""

from __future__ import annotations

import logging
import os
import os.path as osp
import shutil
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.fileio import get_file_backend
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import CosineAnnealingLR, LinearLR
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from mtlora_vision.engine import checkpoint as ckpt
from mtlora_vision.engine.checkpoint import (
    ATOMIC_BACKEND_ARGS,
    AtomicCheckpointHook,
    AtomicLocalBackend,
    TrainableCheckpointHook,
    export_full_weights,
    load_checkpoint_safely,
    register_checkpoint_io,
    remove_stale_temp_files,
    trainable_state_dict,
    trainable_state_dict_keys,
)

# ---------------------------------------------------------------- atomic writes


def test_interrupted_atomic_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "iter_1.pth"
    backend = AtomicLocalBackend()
    torch.save({"w": torch.ones(2)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b"partial new checkpoint bytes", path)
    torch.testing.assert_close(load_checkpoint_safely(path)["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["iter_1.pth"]  # no temporary file left
    monkeypatch.undo()
    register_checkpoint_io()  # mmengine's own CheckpointHook can use it through backend_args
    backend = get_file_backend(str(tmp_path), backend_args=dict(ATOMIC_BACKEND_ARGS))
    assert isinstance(backend, AtomicLocalBackend)
    backend.put_text("iter_2.pth", tmp_path / "last_checkpoint")
    assert (tmp_path / "last_checkpoint").read_text() == "iter_2.pth"


def test_remove_stale_temp_files_only_touches_ours(tmp_path):
    for name in (".iter_3.pth.abc.tmp", ".last_checkpoint.x1.tmp", ".user.tmp", "iter_2.pth"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path)
    ours = [".iter_3.pth.abc.tmp", ".last_checkpoint.x1.tmp"]
    assert sorted(osp.basename(p) for p in removed) == ours
    assert sorted(os.listdir(tmp_path)) == [".user.tmp", "iter_2.pth"]


# ---------------------------------------------------------------- trainable state dict


class _Lora(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base_layer = nn.Linear(2, 2)
        self.base_layer.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.zeros(1, 2))


class _History(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("history", torch.ones(2))
        self.register_buffer("scratch", torch.ones(2), persistent=False)


def _mixed_model() -> nn.Module:
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.backbone.requires_grad_(False)
    model.adapter = _Lora()
    model.head = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.weighting = _History()
    return model


def test_trainable_state_dict_keeps_exactly_the_expected_keys(tmp_path):
    model = _mixed_model()
    expected = {
        "adapter.lora_a",
        "head.0.weight",
        "head.0.bias",
        "head.1.weight",
        "head.1.bias",
        "head.1.running_mean",
        "head.1.running_var",
        "head.1.num_batches_tracked",
        "weighting.history",
    }
    assert trainable_state_dict_keys(model) == expected
    state = trainable_state_dict(model)
    assert set(state) == expected
    assert hasattr(state, "_metadata")
    # The hook filters what mmengine saves and completes it again on load.
    runner = SimpleNamespace(model=model, logger=logging.getLogger("test"))
    checkpoint = {"meta": {}, "state_dict": model.state_dict()}
    TrainableCheckpointHook().before_save_checkpoint(runner, checkpoint)
    assert set(checkpoint["state_dict"]) == expected
    TrainableCheckpointHook().after_load_checkpoint(runner, checkpoint)
    assert set(checkpoint["state_dict"]) == set(model.state_dict())
    filled = checkpoint["state_dict"]["backbone.0.weight"]
    assert filled.data_ptr() == model.backbone[0].weight.data_ptr()  # the model's own frozen weight
    full_hook_ckpt = {"meta": {}, "state_dict": model.state_dict()}
    TrainableCheckpointHook(full_weights=True).before_save_checkpoint(runner, full_hook_ckpt)
    assert set(full_hook_ckpt["state_dict"]) == set(model.state_dict())
    path = tmp_path / "full.pth"
    export_full_weights(model, path)
    full = load_checkpoint_safely(path)
    assert set(full["state_dict"]) == set(model.state_dict())
    assert full["meta"]["state_dict_content"] == "full"


# ---------------------------------------------------------------- Runner round trip


class _Data(Dataset):
    metainfo: ClassVar[dict] = {"classes": ("a", "b")}

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"inputs": torch.randn(4, generator=g), "target": torch.randn(2, generator=g)}


class _TinyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)  # the frozen "backbone" is rebuilt identically, as from a file
        self.backbone = nn.Linear(4, 4)
        self.backbone.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))

    def forward(self, inputs, target=None, mode="tensor"):
        out = self.head(self.backbone(inputs))
        if mode == "loss":
            return {"loss_reg": ((out - target) ** 2).mean()}
        return out


class _LrRecorder(Hook):
    def __init__(self, log: list) -> None:
        self.log = log

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.log.append((runner.iter, runner.optim_wrapper.get_lr()["lr"][0]))


class _KillAt(Hook):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter == self.iteration:
            raise KeyboardInterrupt("simulated kill")


def tiny_runner(work_dir, name, extra_hooks=(), resume=False, max_keep_ckpts=1) -> Runner:
    return Runner(
        model=_TinyModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_Data(),
            batch_size=2,
            sampler=dict(type=DefaultSampler, shuffle=True, seed=0),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        optim_wrapper=dict(optimizer=dict(type=torch.optim.AdamW, lr=0.05, weight_decay=0.05)),
        param_scheduler=[
            dict(
                type=LinearLR,
                start_factor=0.1,
                by_epoch=True,
                begin=0,
                end=1,
                convert_to_iter_based=True,
            ),
            dict(
                type=CosineAnnealingLR,
                T_max=2,
                eta_min=1e-3,
                by_epoch=True,
                begin=1,
                end=3,
                convert_to_iter_based=True,
            ),
        ],
        default_hooks=dict(
            checkpoint=dict(type=AtomicCheckpointHook, interval=1, max_keep_ckpts=max_keep_ckpts),
            logger=dict(type="LoggerHook", interval=100),
        ),
        custom_hooks=[dict(type=TrainableCheckpointHook), *extra_hooks],
        randomness=dict(seed=0),
        resume=resume,
        default_scope=None,
    )


def _head_state(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    full_lrs, part_lrs, resumed_lrs = [], [], []
    full = tiny_runner(tmp_path / "full", "ckpt_full", [_LrRecorder(full_lrs)])
    full.train()
    interrupted = tiny_runner(tmp_path / "run", "ckpt_part", [_LrRecorder(part_lrs), _KillAt(9)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()  # killed at iteration 10, i.e. during epoch 3
    # Trainable-only checkpoint, and mmengine's rotation kept only the newest one.
    assert sorted(f for f in os.listdir(tmp_path / "run") if ".pth" in f) == [
        "epoch_2.pth",
        "epoch_2.pth.sha256.json",  # epoch_1's record went with it
    ]
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "epoch_2.pth"  # relative
    saved = load_checkpoint_safely(tmp_path / "run" / "epoch_2.pth")
    assert set(saved["state_dict"]) == trainable_state_dict_keys(_TinyModel())
    assert not any(k.startswith("backbone.") for k in saved["state_dict"])
    assert saved["meta"]["state_dict_content"] == "trainable"
    assert {"optimizer", "param_schedulers", "message_hub"} <= set(saved)

    resumed = tiny_runner(tmp_path / "run", "ckpt_resumed", [_LrRecorder(resumed_lrs)], resume=True)
    resumed.train()
    assert resumed_lrs[0][0] == 8  # continues after epoch 2 (8 iterations)
    assert [i for i, _ in part_lrs[:8] + resumed_lrs] == list(range(12))
    lrs = [lr for _, lr in part_lrs[:8] + resumed_lrs]
    assert lrs == pytest.approx([lr for _, lr in full_lrs], rel=1e-12)
    expected, got = _head_state(full), _head_state(resumed)
    assert set(expected) == set(got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7)


class _CrashOnSecondSave(Hook):
    priority = "VERY_HIGH"

    def __init__(self, monkeypatch) -> None:
        self.saves = 0
        self.monkeypatch = monkeypatch

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        self.saves += 1
        if self.saves == 2:  # the second write is killed right before its rename
            self.monkeypatch.setattr(ckpt.os, "replace", _raise_interrupt)


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt("power cut")


def test_crash_during_checkpoint_write_keeps_latest_checkpoint(tmp_path, monkeypatch):
    runner = tiny_runner(tmp_path, "ckpt_crash", [_CrashOnSecondSave(monkeypatch)])
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    files = sorted(os.listdir(tmp_path))
    assert "epoch_1.pth" in files  # max_keep_ckpts=1: deleted only after a successful save
    assert "epoch_2.pth" not in files
    assert not [f for f in files if f.endswith(".tmp")]
    assert (tmp_path / "last_checkpoint").read_text().endswith("epoch_1.pth")
    loaded = load_checkpoint_safely(tmp_path / "epoch_1.pth")
    assert loaded["meta"]["epoch"] == 1


def _digests(folder) -> dict:
    import hashlib

    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_copied_work_dir_resumes_its_own_newest_complete_checkpoint(tmp_path, caplog):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # killed during epoch 3
        tiny_runner(run, "ckpt_copy_src", [_KillAt(9)], max_keep_ckpts=2).train()
    before = _digests(run)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "epoch_1.pth").touch()  # newest by file time, oldest by training progress
    lrs = []
    recorder = [_LrRecorder(lrs)]
    runner = tiny_runner(copy, "ckpt_copy_resumed", recorder, resume=True, max_keep_ckpts=2)
    runner.train()
    assert runner._load_from == str(copy / "epoch_2.pth")  # its own file, not the original's
    assert lrs[0][0] == 8  # continued after epoch 2, not epoch 1
    assert _digests(run) == before  # the original is untouched
    # A damaged newest checkpoint is skipped, naming it and why; the previous one is used.
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    data = (damaged / "epoch_2.pth").read_bytes()
    (damaged / "epoch_2.pth").write_bytes(data[: len(data) // 2])
    lrs = []
    with caplog.at_level(logging.WARNING):
        runner = tiny_runner(damaged, "ckpt_damaged", [_LrRecorder(lrs)], resume=True)
        runner.train()
    assert lrs[0][0] == 4  # continued after epoch 1
    assert "epoch_2.pth, it is damaged: it is truncated" in caplog.text
    final = load_checkpoint_safely(damaged / "epoch_3.pth")  # complete, with its record
    assert final["meta"]["epoch"] == 3
    assert (damaged / "epoch_3.pth.sha256.json").is_file()


def test_save_best_ignores_the_validation_before_training():
    hook = AtomicCheckpointHook(interval=1, save_best="acc")
    messages = []
    runner = SimpleNamespace(logger=SimpleNamespace(info=messages.append))
    hook.after_val_epoch(runner, {"acc": 0.5})  # before before_train: mmengine raised here
    assert messages == ["save_best: the validation before training is not a candidate."]


def test_best_checkpoint_paths_of_a_copied_run_stay_in_the_copy(tmp_path):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("ckpt_best_paths")
    hub.update_info("best_ckpt", "/original/run/best_acc_epoch_3.pth")  # from the resumed file
    hook = AtomicCheckpointHook(interval=1, save_best="acc")
    runner = SimpleNamespace(work_dir=str(tmp_path), logger=logging.getLogger("t"), message_hub=hub)
    hook.before_train(runner)
    # mmengine would delete /original/run/best_acc_epoch_3.pth when a better score comes.
    assert hook.best_ckpt_path == str(tmp_path / "best_acc_epoch_3.pth")
