"""tools/profile_floor.py: time per op and per module, forward and backward, over the floor."""

from __future__ import annotations

import os

import pytest
import torch
from test_model_tools import tiny_config
from tool_loader import load_tool
from torch import nn

from mtlora_vision.benchmarking.profiling import (
    UNTRACED,
    attribute,
    module_ranges,
    over_floor,
    profile_step,
)
from mtlora_vision.errors import ConfigError


def test_operators_are_attributed_to_the_module_of_their_forward_also_in_backward():
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16))
    x = torch.randn(4, 8)
    with module_ranges(model), torch.profiler.profile() as prof:
        model(x).square().sum().backward()
    tables = attribute(list(prof.events()))
    ops, modules = tables["ops"], tables["modules"]
    # gelu_backward is made by GELU's forward, layer-norm backward by LayerNorm's.
    assert {"forward:GELU", "backward:GELU", "forward:LayerNorm", "backward:LayerNorm"} <= set(
        modules
    )
    assert "aten::gelu_backward" in ops
    for table in tables.values():  # every keying splits the same operator time
        assert sum(table.values()) == pytest.approx(sum(ops.values()))
    assert set(tables["kinds"]) == {"matmul", "other"}  # addmm against gelu, layer norm, ...
    assert not any(hasattr(m, "_profile_range") for m in model.modules())  # hooks cleaned up
    assert model[0]._forward_hooks == {}
    assert model[0]._forward_pre_hooks == {}


def test_profiled_steps_drop_kinetos_console_lines_and_pass_on_the_rest(capfd):
    model = nn.Linear(8, 8)
    noise = (
        "USDT:2026-12-03 09:10:59 11:11 SyncActivityProfilerHandler.cpp:39] profiler_start\n"
        "ERROR:2026-12-03 09:10:59 11:11 DeviceProperties.cpp:56] gpuGetDeviceCount failed "
        "with code 35\n"
    )

    def step(images: torch.Tensor) -> None:
        os.write(2, noise.encode())  # the lines kineto writes from C++
        os.write(2, b"a real warning\n")
        model(images).sum().backward()

    result = profile_step(step, model, torch.randn(2, 8))
    assert result["wall_ms"]["total"] > 0
    err = capfd.readouterr().err
    assert "a real warning\n" in err
    assert "USDT" not in err  # ours and kineto's own
    assert "gpuGetDeviceCount" not in err


def test_over_floor_rows_sum_to_the_time_over_the_floor():
    model = {"aten::mm": 10.0, "aten::gelu": 4.0, UNTRACED: 3.0}
    frozen = {"aten::mm": 4.0, UNTRACED: 2.0, "aten::conv": 1.0}
    rows = over_floor(model, frozen, flop_ratio=2.0)
    assert rows[0] == ("aten::gelu", 4.0, 0.0, 4.0)  # largest excess first
    assert dict((r[0], r[3]) for r in rows) == {
        "aten::mm": 2.0, "aten::gelu": 4.0, UNTRACED: -1.0, "aten::conv": -2.0
    }  # fmt: skip
    assert sum(r[3] for r in rows) == pytest.approx(17.0 - 2.0 * 7.0)


def test_profile_floor_tool_splits_the_time_over_the_floor(tmp_path, capsys):
    tool = load_tool("profile_floor")
    argv = [tiny_config(tmp_path), "--img-size", "64", "--iters", "1", "--warmup", "0",
            "--threads", "1", "--phases", "train", "infer_merged"]  # fmt: skip
    report = tool.main(argv)
    out, _ = capsys.readouterr()
    for key in ("train@fp32", "infer_merged@fp32"):  # MTLORA_PRECISION=fp32 (conftest.py)
        entry = report[key]
        assert entry["over_floor_ms"] == pytest.approx(
            entry["model_ms"] - entry["flop_ratio"] * entry["frozen_ms"]
        )
        for table in ("kinds", "ops", "modules", "module_ops"):
            assert sum(r[3] for r in entry[table]) == pytest.approx(entry["over_floor_ms"])
        assert f"{key}: model " in out
    assert any(r[0].startswith("backward:") for r in report["train@fp32"]["modules"])
    assert not any(r[0].startswith("backward:") for r in report["infer_merged@fp32"]["modules"])
    with pytest.raises(ConfigError, match=r"--img-size 100: .* use e\.g\. --img-size 96"):
        tool.main([argv[0], "--img-size", "100"])  # refused before any model is built
