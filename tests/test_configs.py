"""Every config under configs/ loads and builds a model (with a tiny backbone) that runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*.py")
    if "__pycache__" not in p.parts
)
TINY_ARCH = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


def test_configs_are_found():
    assert "configs/mtlora_swin_pascal.py" in CONFIGS
    assert "configs/mtlora_swin_demo.py" in CONFIGS
    assert len([c for c in CONFIGS if c.startswith("configs/paper/")]) == 6


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds(path):
    cfg = Config.fromfile(str(REPO / path))
    if "model" not in cfg:
        # Partial layers (datasets, schedules, runtime) have no model; they must still load.
        assert "/_base_/" in path, f"{path} is an experiment config without a model"
        return
    cfg.model.backbone.update(arch=TINY_ARCH, img_size=64, pretrained=None)
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert tuple(outputs) == tuple(cfg.model.tasks)
    for task, out in outputs.items():
        assert out.shape[-2:] == (64, 64), task
    if "/_base_/" not in path:
        # Experiment configs are complete: data, evaluation and schedule are there.
        for key in ("train_dataloader", "val_dataloader", "val_evaluator", "optim_wrapper"):
            assert key in cfg, f"{path} lacks {key}"
        assert tuple(cfg.train_dataloader.dataset.tasks) == tuple(cfg.model.tasks)
        assert tuple(cfg.val_dataloader.dataset.tasks) == tuple(cfg.model.tasks)
        assert tuple(cfg.test_dataloader.dataset.tasks) == tuple(cfg.model.tasks)
        # The metrics take their tasks from the evaluated dataset (dataset_meta).
        assert "tasks" not in cfg.val_evaluator
        assert "tasks" not in cfg.test_evaluator


def test_main_config_follows_the_official_recipe():
    cfg = Config.fromfile(str(REPO / "configs/mtlora_swin_pascal.py"))
    assert cfg.model.tasks == ("semseg", "human_parts", "sal", "normals", "edge")
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4 * 32 / 512)
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.optim_wrapper.clip_grad.max_norm == 5.0
    assert cfg.optim_wrapper.type.__name__ == "AmpOptimWrapper"
    assert cfg.train_dataloader.batch_size == 32
    assert cfg.train_cfg.max_epochs == 300
    warmup, cosine = cfg.param_scheduler
    assert (warmup.begin, warmup.end, cosine.begin, cosine.end) == (0, 20, 20, 300)
    assert warmup.start_factor * cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-7 * 32 / 512)
    assert cosine.eta_min == pytest.approx(5e-6 * 32 / 512)
    assert cfg.randomness.seed == 0
    assert cfg.model.backbone.pretrained.endswith("swin_tiny_patch4_window7_224.pth")
    # Cosine per iteration after the warm-up; validation every 5 epochs as officially.
    assert warmup.convert_to_iter_based
    assert cosine.convert_to_iter_based
    assert cosine.T_max == 280
    assert cfg.train_cfg.val_interval == 5
    assert cfg.model.losses.weighting.type == "fixed"  # official weights 1/2/5/10/50
    # Switching to DWA needs its epoch hook, so every config has it (a no-op otherwise).
    hooks = {getattr(h["type"], "__name__", h["type"]) for h in cfg.custom_hooks}
    assert {"DWAEpochHook", "NonFiniteLossHook", "TrainableCheckpointHook"} <= hooks
    assert cfg.default_hooks.checkpoint.type.__name__ == "AtomicCheckpointHook"


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    cfg = Config.fromfile(str(REPO / "configs/mtlora_swin_pascal.py"))
    missing = tmp_path / "swin_tiny_patch4_window7_224.pth"
    cfg.model.backbone.update(arch=TINY_ARCH, img_size=64, pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match=r"swin_tiny_patch4_window7_224\.pth"):
        MODELS.build(cfg.model)


def test_dumped_config_builds_the_same_model(tmp_path):
    # mmengine dumps pure-Python configs with classes as dotted strings (the copy in the work dir);
    # the builders must take that copy too, so `tools/test.py work_dirs/x/x.py CKPT` works.
    cfg = Config.fromfile(str(REPO / "configs/mtlora_swin_demo.py"))
    cfg.model.backbone.update(arch=TINY_ARCH, img_size=64, pretrained=None)
    cfg.dump(str(tmp_path / "dumped.py"))
    dumped = Config.fromfile(str(tmp_path / "dumped.py"))
    assert isinstance(dumped.model.adapter.type, str)
    torch.manual_seed(0)
    original = MODELS.build(cfg.model).eval()
    torch.manual_seed(0)
    rebuilt = MODELS.build(dumped.model).eval()
    assert original.state_dict().keys() == rebuilt.state_dict().keys()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = original(x, mode="tensor"), rebuilt(x, mode="tensor")
    for task in expected:
        torch.testing.assert_close(actual[task], expected[task])


def _official_lr(step: int, warmup: int, total: int, base: float, start: float, low: float):
    """timm CosineLRScheduler with warmup_prefix, per iteration (docs/recipe.md#optimizer), written
    out."""
    if step < warmup:
        return start + (base - start) * step / warmup
    return low + 0.5 * (base - low) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_main_schedule_equals_the_official_per_iteration_cosine():
    cfg = Config.fromfile(str(REPO / "configs/mtlora_swin_pascal.py"))
    epoch_length = 4  # 156 in the real run; the curve only scales
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = []
    for entry in cfg.param_scheduler:
        options = {k: v for k, v in entry.items() if k not in ("type", "convert_to_iter_based")}
        options.pop("by_epoch")
        schedulers.append(
            entry["type"].build_iter_from_epoch(optimizer, **options, epoch_length=epoch_length)
        )
    warmup, total = 20 * epoch_length, 300 * epoch_length
    base, start, low = 5e-4 * 32 / 512, 5e-7 * 32 / 512, 5e-6 * 32 / 512
    for step in range(total):
        expected = _official_lr(step, warmup, total, base, start, low)
        lr = optimizer.param_groups[0]["lr"]
        if step < warmup:  # mmengine's linear warm-up reaches the peak one iteration earlier
            assert lr == pytest.approx(expected, abs=base / warmup), step
        else:
            assert lr == pytest.approx(expected, rel=1e-9), step
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
