"""Checkpoint I/O: safe loading, atomic writes, trainable-only state dicts, Runner resume."""

from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import shutil
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.fileio import get_file_backend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.optim import CosineAnnealingLR, LinearLR
from mmengine.runner import CheckpointLoader, Runner
from torch import nn
from torch.utils.data import Dataset

from mtlora_vision.engine import checkpoint as ckpt
from mtlora_vision.engine.checkpoint import (
    ATOMIC_BACKEND_ARGS,
    AtomicCheckpointHook,
    AtomicLocalBackend,
    DamagedCheckpointError,
    TrainableCheckpointHook,
    UnsafeCheckpointError,
    export_full_weights,
    load_checkpoint_safely,
    register_checkpoint_io,
    remove_stale_temp_files,
    save_checkpoint_file,
    trainable_state_dict,
    trainable_state_dict_keys,
)


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvilOpen:
    """Unpickling this would create a file through builtins.open."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


class Harmless:
    def __init__(self) -> None:
        self.value = 1


class _SneakyGetattr:
    def __reduce__(self):
        return getattr, (HistoryBuffer, "__init__")


# ---------------------------------------------------------------- safe loading


def test_safe_loader_refuses_code_execution_and_names_type_and_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*system"):
        load_checkpoint_safely(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        (Harmless(), r"forbidden type\(s\) \['test_engine_checkpoint\.Harmless'\]"),
        (_SneakyGetattr(), r"getattr\(.*HistoryBuffer.*'__init__'\) is not on the checkpoint"),
    ],
)
def test_safe_loader_refuses_other_classes_and_arbitrary_getattr(tmp_path, payload, pattern):
    path = tmp_path / "odd.pth"
    torch.save({"payload": payload}, path)
    with pytest.raises(UnsafeCheckpointError, match=pattern):
        load_checkpoint_safely(path)
    with pytest.raises(pickle.UnpicklingError):  # also an UnpicklingError for generic callers
        load_checkpoint_safely(path)


def test_safe_loader_reads_allowed_content_and_is_mmengines_local_loader(tmp_path):
    import numpy as np

    buffer = HistoryBuffer()
    buffer.update(2.0)
    buffer.update(4.0)
    data = {
        "w": torch.arange(3.0),
        "hist": buffer,
        "arr": np.arange(3, dtype=np.float32),
        "score": np.float64(0.5),
        "ids": [1, 2],
        "name": "x",
    }
    path = tmp_path / "ok.pth"
    torch.save(data, path)
    register_checkpoint_io()
    assert CheckpointLoader._get_checkpoint_loader(str(path)) is ckpt.load_from_local_safe
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert loaded["hist"].mean() == pytest.approx(3.0)
    assert loaded["arr"].tolist() == [0.0, 1.0, 2.0]
    assert loaded["score"] == 0.5
    torch.testing.assert_close(loaded["w"], data["w"])
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_checkpoint_safely(tmp_path / "missing.pth")


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


def _runner(work_dir, name, extra_hooks=(), resume=False, max_keep_ckpts=1) -> Runner:
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
    full = _runner(tmp_path / "full", "ckpt_full", [_LrRecorder(full_lrs)])
    full.train()
    interrupted = _runner(tmp_path / "run", "ckpt_part", [_LrRecorder(part_lrs), _KillAt(9)])
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

    resumed = _runner(tmp_path / "run", "ckpt_resumed", [_LrRecorder(resumed_lrs)], resume=True)
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
    runner = _runner(tmp_path, "ckpt_crash", [_CrashOnSecondSave(monkeypatch)])
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    files = sorted(os.listdir(tmp_path))
    assert "epoch_1.pth" in files  # max_keep_ckpts=1: deleted only after a successful save
    assert "epoch_2.pth" not in files
    assert not [f for f in files if f.endswith(".tmp")]
    assert (tmp_path / "last_checkpoint").read_text().endswith("epoch_1.pth")
    loaded = load_checkpoint_safely(tmp_path / "epoch_1.pth")
    assert loaded["meta"]["epoch"] == 1


# ---------------------------------------------------------------- every loader, one safe path


def _evil_file(tmp_path, payload_type, legacy=False):
    marker = tmp_path / f"pwned_{payload_type.__name__}"
    path = tmp_path / "epoch_5.pth"
    evil = {"state_dict": {}, "meta": {"epoch": 5, "iter": 10}, "x": payload_type(str(marker))}
    torch.save(evil, path, _use_new_zipfile_serialization=not legacy)
    return path, marker


def _loaders(tmp_path):
    """Every checkpoint reader of the package, as ``name -> (path -> None)``."""
    from test_model_tools import load_tool, tiny_config

    from mtlora_vision.apis.inference import init_model
    from mtlora_vision.models.backbones.swin import SwinBackbone
    from mtlora_vision.models.backbones.swin_checkpoint import load_checkpoint_file

    converter = load_tool("convert_official_checkpoint")
    config = tiny_config(tmp_path)

    def resume(path):
        _runner(path.parent, f"resume_{path.parent.name}", resume=True).train()

    def mmengine_load_from(path):
        register_checkpoint_io()
        CheckpointLoader.load_checkpoint(str(path), map_location="cpu")

    def imagenet(path):
        SwinBackbone(
            arch=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
            img_size=64,
            window_size=4,
            pretrained=str(path),
        ).init_weights()

    return {
        "load_checkpoint_safely": load_checkpoint_safely,
        "mmengine_load_from": mmengine_load_from,
        "resume": resume,
        "init_model": lambda path: init_model(config, path),
        "converter": lambda path: converter.main([str(path), str(tmp_path / "out.pth")]),
        "swin_checkpoint_file": load_checkpoint_file,
        "imagenet_backbone": imagenet,
    }


LOADERS = (
    "load_checkpoint_safely",
    "mmengine_load_from",
    "resume",
    "init_model",
    "converter",
    "swin_checkpoint_file",
    "imagenet_backbone",
)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("payload", "legacy"), [(Evil, False), (EvilOpen, False), (Evil, True)])
def test_no_loader_runs_code_from_a_file(tmp_path, loader, payload, legacy):
    path, marker = _evil_file(tmp_path, payload, legacy)
    name = "system" if payload is Evil else "open"
    with pytest.raises(UnsafeCheckpointError, match=rf"epoch_5\.pth.*{name}"):
        _loaders(tmp_path)[loader](path)
    assert not marker.exists()


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_every_loader_calls_a_damaged_file_damaged(tmp_path, loader, damage):
    path = tmp_path / "epoch_5.pth"
    save_checkpoint_file({"state_dict": {"w": torch.ones(64)}, "meta": {"iter": 1}}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:300], "empty": b"", "random": os.urandom(900)}[damage])
    with pytest.raises(DamagedCheckpointError, match=r"epoch_5\.pth'? is damaged") as info:
        _loaders(tmp_path)[loader](path)
    assert not isinstance(info.value, pickle.UnpicklingError)  # not a security refusal


_CFGNODE_SOURCE = '''
class CfgNode(dict):
    """Like yacs.config.CfgNode: a dict subclass with attribute access and instance flags."""

    def __init__(self, init_dict=None):
        init_dict = dict(init_dict or {})
        for key, value in init_dict.items():
            if type(value) is dict:
                init_dict[key] = CfgNode(value)
        super().__init__(init_dict)
        self.__dict__["__immutable__"] = True
        self.__dict__["__deprecated_keys__"] = set()
        self.__dict__["__renamed_keys__"] = {}
        self.__dict__["__new_allowed__"] = False

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)
'''


def _save_official_style(path, model_state: dict) -> dict:
    """Save a file laid out like the official release, its config class then made unimportable."""
    import importlib.util
    import sys
    import types

    from timm.scheduler import CosineLRScheduler

    package, module = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    package.config = module
    exec(_CFGNODE_SOURCE, module.__dict__)
    sys.modules.update({"yacs": package, "yacs.config": module})
    try:
        config = module.CfgNode(
            {"MODEL": {"TYPE": "swin", "MTLORA": {"R": [64, 64, 64, 64]}}, "TRAIN": {"EPOCHS": 300}}
        )
        params = [torch.nn.Parameter(torch.ones(3))]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        params[0].grad = torch.ones(3)
        optimizer.step()
        scheduler = CosineLRScheduler(optimizer, t_initial=100, warmup_t=20, t_in_epochs=False)
        scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5}
        scaler |= {"growth_interval": 2000, "_growth_tracker": 7}
        content = {
            "model": model_state,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "max_accuracy": 0.0,
            "scaler": scaler,
            "epoch": 299,
            "config": config,
        }
        torch.save(content, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
    assert importlib.util.find_spec("yacs") is None  # not installed: nothing to import on load
    return content


def test_official_style_file_converts_and_loads_strictly_without_yacs(tmp_path):
    from test_model_tools import load_tool, randomise, tiny_config

    from mtlora_vision.apis.inference import init_model
    from mtlora_vision.safe_load import ForeignObject, check_checkpoint_integrity

    tool = load_tool("convert_official_checkpoint")
    config = tiny_config(tmp_path)
    source = init_model(config)
    randomise(source)
    official = tool.to_official_state_dict(source.state_dict())
    content = _save_official_style(tmp_path / "official.pth", official)
    loaded = load_checkpoint_safely(tmp_path / "official.pth")
    cfg = loaded["config"]
    assert isinstance(cfg, ForeignObject)
    assert cfg.foreign_type == "yacs.config.CfgNode"
    assert cfg.MODEL.MTLORA.R == [64, 64, 64, 64]
    assert cfg.TRAIN.EPOCHS == 300
    assert cfg.pickled_state["__immutable__"] is True
    assert loaded["lr_scheduler"] == content["lr_scheduler"]
    assert loaded["scaler"] == content["scaler"]
    assert loaded["epoch"] == 299
    torch.testing.assert_close(
        loaded["optimizer"]["state"][0]["exp_avg"], content["optimizer"]["state"][0]["exp_avg"]
    )
    tool.main([str(tmp_path / "official.pth"), str(tmp_path / "ours.pth"), "--check", config])
    model = init_model(config, tmp_path / "ours.pth")  # strict
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert "size and SHA-256" in check_checkpoint_integrity(tmp_path / "ours.pth")


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
        _runner(run, "ckpt_copy_src", [_KillAt(9)], max_keep_ckpts=2).train()
    before = _digests(run)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "epoch_1.pth").touch()  # newest by file time, oldest by training progress
    lrs = []
    runner = _runner(copy, "ckpt_copy_resumed", [_LrRecorder(lrs)], resume=True, max_keep_ckpts=2)
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
        runner = _runner(damaged, "ckpt_damaged", [_LrRecorder(lrs)], resume=True)
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
