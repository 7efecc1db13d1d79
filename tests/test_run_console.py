"""Run console and logs: package records through the run's logger, quiet start, summaries,
one data_root for every loader, test runs without TensorBoard."""

from __future__ import annotations

import logging

import pytest
from engine_utils import DEMO
from mmengine.config import Config

from mtlora_vision.engine.data_root import apply_data_root, loader_data_roots
from mtlora_vision.engine.run_logging import (
    DropMessages,
    QuietStart,
    attach_run_logger,
    package_logs_to_run,
)
from mtlora_vision.engine.runner import prepare_test_config
from mtlora_vision.engine.summary import MetricHistory, format_block, precision_of
from mtlora_vision.evaluation.units import METRIC_UNITS, metric_unit
from mtlora_vision.tasks import TASKS


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_package_records_wait_for_the_run_logger_then_go_through_it():
    run_logger = logging.Logger("run")
    collected = _Collect()
    run_logger.addHandler(collected)
    package = logging.getLogger("mtlora_vision.some.module")
    with package_logs_to_run():
        package.info("before the runner")  # held: no run logger yet
        assert collected.records == []
        attach_run_logger(run_logger)
        package.warning("after")
    package.info("outside the block")  # back to standard logging, not the run's logger
    assert [r.getMessage() for r in collected.records] == ["before the runner", "after"]
    assert logging.getLogger("mtlora_vision").propagate


def test_records_without_a_run_logger_are_not_lost(capsys):
    with package_logs_to_run():
        logging.getLogger("mtlora_vision.x").warning("no runner was built")
    assert "WARNING - mtlora_vision.x - no runner was built" in capsys.readouterr().err


def test_quiet_start_and_mmengine_deprecation_filters():
    quiet = QuietStart()
    info = logging.LogRecord("x", logging.INFO, "", 0, "environment dump", None, None)
    warning = logging.LogRecord("x", logging.WARNING, "", 0, "split size", None, None)
    assert not quiet.filter(info)
    assert quiet.filter(warning)
    quiet.active = False
    assert quiet.filter(info)
    drop = DropMessages(('"FileClient" will be deprecated',))
    notice = '"FileClient" will be deprecated in future. Please use io functions'
    assert not drop.filter(logging.LogRecord("m", logging.WARNING, "", 0, notice, None, None))
    assert drop.filter(warning)


def test_data_root_option_moves_every_loader():
    cfg = Config.fromfile(DEMO)
    assert set(loader_data_roots(cfg).values()) == {cfg.data_root}  # one setting in the file
    options = {"data_root": "/data/x"}
    cfg.merge_from_dict(options)
    assert set(loader_data_roots(cfg).values()) == {"data/demo_pascal"}  # what mmengine does
    assert apply_data_root(cfg, None, options) == "/data/x"
    assert set(loader_data_roots(cfg).values()) == {"/data/x"}


def test_data_root_flag_wins_and_explicit_loader_overrides_stay():
    cfg = Config.fromfile(DEMO)
    options = {"data_root": "/data/x", "val_dataloader.dataset.data_root": "/data/val"}
    cfg.merge_from_dict(options)
    apply_data_root(cfg, "/data/flag", options)
    roots = loader_data_roots(cfg)
    assert roots == {
        "train_dataloader": "/data/flag",
        "val_dataloader": "/data/val",
        "test_dataloader": "/data/flag",
    }
    assert cfg.data_root == "/data/flag"
    untouched = Config.fromfile(DEMO)
    assert apply_data_root(untouched) is None
    assert set(loader_data_roots(untouched).values()) == {"data/demo_pascal"}


def test_every_config_states_its_data_root_once():
    from pathlib import Path

    for path in sorted(Path(DEMO).parent.rglob("*.py")):
        if "_base_" in path.parts:
            continue
        cfg = Config.fromfile(str(path))
        assert set(loader_data_roots(cfg).values()) == {cfg.data_root}, path


def test_test_config_has_no_tensorboard_backend():
    cfg = Config.fromfile(DEMO)
    prepare_test_config(cfg)
    names = [str(b["type"]) for b in cfg.visualizer.vis_backends]
    assert names
    assert not any("Tensorboard" in n for n in names)


def test_metric_history_best_by_direction_and_last():
    history = MetricHistory()
    history.add(0, {"semseg/mIoU": 1.0, "normals/mean": 90.0})
    history.add(6, {"semseg/mIoU": 9.0, "normals/mean": 30.0})
    history.add(12, {"semseg/mIoU": 8.0, "normals/mean": 31.0})
    lines = history.table().splitlines()
    assert lines[0].split() == ["metric", "best", "epoch", "last", "epoch", "unit"]
    assert lines[1].split() == ["semseg/mIoU", "9.0000", "6", "8.0000", "12", "%", "(higher", "is",
                                "better)"]  # fmt: skip
    assert lines[2].split()[:6] == ["normals/mean", "30.0000", "6", "31.0000", "12", "deg"]


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        ("semseg/mIoU", "%"),
        ("normals/mean", "deg"),
        ("normals/11.25", "%"),
        ("edge/bce", ""),
        ("depth/rmse", "m"),
        ("semseg/IoU/person", "%"),
        ("not/a_metric", ""),
    ],
)
def test_metric_units(key, unit):
    assert metric_unit(key) == unit


def test_every_task_metric_has_a_stated_unit():
    stated = set(METRIC_UNITS)
    assert {key for info in TASKS.values() for key in info.metrics} <= stated


@pytest.mark.parametrize(
    ("wrapper", "expected"),
    [
        (None, "fp32"),
        ({"type": "OptimWrapper"}, "fp32"),
        ({"type": "mtlora_vision.engine.amp.CPUAutocastOptimWrapper"}, "bf16 autocast (CPU)"),
        ({"type": "AmpOptimWrapper", "dtype": "float16"}, "fp16 autocast (AMP) on cuda:0"),
        ({"type": "AmpOptimWrapper", "dtype": "bfloat16"}, "bfloat16 autocast (AMP) on cuda:0"),
    ],
)
def test_precision_is_named(wrapper, expected):
    assert precision_of(wrapper, "cuda:0") == expected


def test_format_block_aligns_values():
    text = format_block("Start-up (train):", [("config", "a.py"), ("work dir", "w")])
    assert text.splitlines() == ["Start-up (train):", "  config:   a.py", "  work dir: w"]
