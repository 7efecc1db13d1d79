"""What torch.compile traces of the Swin backbone: one graph, window geometry held constant.

Only TorchDynamo's tracing runs here (``torch._dynamo.explain``), never inductor's code generation:
compile times are figures of ``tools/benchmark.py --compile``.
"""

from __future__ import annotations

import torch
from test_swin import tiny_backbone

from mtlora_vision.adapters.config import MTLoRAConfig


def test_backbone_traces_as_one_graph_without_rebuilding_window_tables() -> None:
    adapter = MTLoRAConfig(shared_rank=2, task_rank=1, dropout=0.0)
    backbone = tiny_backbone(tasks=("semseg", "sal"), adapter=adapter)
    backbone.train()  # training runs the task branches with their own autograd functions
    assert backbone.recompute_elementwise  # the default: its saved-tensor hooks stay out of traces
    torch._dynamo.reset()
    report = torch._dynamo.explain(backbone)(torch.randn(1, 3, 64, 64))
    assert report.graph_count == 1
    assert report.graph_break_count == 0
    targets = {str(node.target) for g in report.graphs for node in g.graph.nodes}
    # Shift masks and token permutations are constants of the graph, not recomputed per call
    # (they were: an argsort and a mask build per block and per compiled call).
    assert not any("argsort" in t or "masked_fill" in t or "meshgrid" in t for t in targets)


def test_lora_dropout_traces_without_graph_breaks() -> None:
    adapter = MTLoRAConfig(shared_rank=2, task_rank=1, dropout=0.1)
    backbone = tiny_backbone(tasks=("semseg", "sal"), adapter=adapter).train()
    torch._dynamo.reset()
    report = torch._dynamo.explain(backbone)(torch.randn(1, 3, 64, 64))
    assert report.graph_break_count == 0  # GapDropout's data-dependent loop is not traced
