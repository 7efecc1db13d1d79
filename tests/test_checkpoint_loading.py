"""Checkpoint reading: no reader runs code from a file, a damaged file is called damaged, and
the official release's files convert and load strictly."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader
from test_engine_checkpoint import tiny_runner

from mtlora_vision.engine import checkpoint as ckpt
from mtlora_vision.engine.checkpoint import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_safely,
    register_checkpoint_io,
    save_checkpoint_file,
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
        (Harmless(), r"forbidden type\(s\) \['test_checkpoint_loading\.Harmless'\]"),
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
        tiny_runner(path.parent, f"resume_{path.parent.name}", resume=True).train()

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
