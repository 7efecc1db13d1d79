"""Aten calls timed by operator, argument shapes and layout (profile_floor --by-shape)."""

from __future__ import annotations

import pytest
import torch
from test_model_tools import tiny_config
from tool_loader import load_tool

from mtlora_vision.benchmarking.op_shapes import ShapeRow, describe, time_by_shape, top_rows


def test_describe_names_shape_dtype_and_strides_of_views_only():
    x = torch.zeros(4, 5)
    assert describe(x) == "4x5 float32"
    assert describe(x.t()) == "5x4 float32 strides (1, 5)"
    assert describe(torch.zeros((), dtype=torch.bfloat16)) == "scalar bfloat16"
    assert describe(3) is None


def test_calls_are_counted_per_operator_shape_and_layout_forward_and_backward():
    a = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(6, 5)

    def step(images: torch.Tensor) -> None:
        (torch.mm(a, b.t()) * images).sum().backward()  # mm on a transposed view

    rows = time_by_shape(step, torch.ones(4, 6), steps=3, warmup=1)
    by_key = {(row.op, row.args): row for row in rows}
    forward = by_key[("aten.mm.default", ("4x5 float32", "5x6 float32 strides (1, 5)"))]
    assert forward.calls == 1  # per step, over 3 timed steps
    assert forward.ms >= 0
    backward = [r for r in rows if r.op == "aten.mm.default" and r is not forward]
    assert sum(r.calls for r in backward) == 1  # the gradient of a only; b needs none
    assert [r.ms for r in rows] == sorted((r.ms for r in rows), reverse=True)
    with pytest.raises(ValueError, match="steps=0"):
        time_by_shape(step, torch.ones(4, 6), steps=0)


def test_top_rows_keep_the_rest_as_one_row():
    rows = [ShapeRow("aten.mm.default", ("2x2 float32",), 1.0, float(ms)) for ms in (5, 3, 2, 1)]
    head = top_rows(rows, 2)
    assert [r["ms"] for r in head] == [5.0, 3.0, 3.0]
    assert head[-1]["op"] == "[2 more]"
    assert head[-1]["calls"] == 2.0
    assert top_rows(rows, 4)[-1]["op"] == "aten.mm.default"


def test_profile_floor_lists_the_models_calls_by_shape(tmp_path, capsys):
    tool = load_tool("profile_floor")
    argv = [tiny_config(tmp_path), "--img-size", "64", "--iters", "1", "--warmup", "0",
            "--threads", "1", "--phases", "train", "--by-shape", "5"]  # fmt: skip
    report = tool.main(argv)
    out, _ = capsys.readouterr()
    rows = report["train@fp32"]["by_shape"]
    assert len(rows) == 6
    assert rows[-1]["op"].endswith("more]")
    assert all(row["ms"] >= 0 and row["calls"] > 0 for row in rows)
    assert "aten calls by operator, argument shapes and strides" in out
    assert rows[0]["op"] in out
    with pytest.raises(SystemExit):
        tool.main([argv[0], "--by-shape", "-1"])
