"""MTL-LoRA and TA-LoRA demo twins (all three fast-slow choices) train through tools/train.py."""

from __future__ import annotations

import json

import pytest
import torch
from engine_utils import REPO, tiny_options
from mmengine.config import Config
from tool_loader import load_tool

CONFIGS = {
    "mtl-lora": REPO / "configs/methods/demo/mtl-lora_demo.py",
    "ta-lora": REPO / "configs/methods/demo/ta-lora_demo.py",
    "ta-lora-lookahead": REPO / "configs/methods/demo/ta-lora-lookahead_demo.py",
    "ta-lora-two-phase": REPO / "configs/methods/demo/ta-lora-two-phase_demo.py",
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_demo_twin_trains_two_iterations(method, tmp_path):
    epochs = 2 if method == "ta-lora-two-phase" else 1
    options = tiny_options(tmp_path / "data", epochs=epochs)
    options = [o for o in options if not o.startswith("model.adapter.")]
    if method == "ta-lora-two-phase":  # phase one is epoch 1, phase two epoch 2
        hooks = Config.fromfile(str(CONFIGS[method])).custom_hooks
        options.append(f"custom_hooks.{len(hooks) - 1}.switch_epoch=1")
    work_dir = tmp_path / "work"
    load_tool("train").main(
        [str(CONFIGS[method]), "--work-dir", str(work_dir), "--cfg-options", *options]
    )
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["step"] == 2 * epochs
    assert all(
        f"loss_{t}" in steps[-1] for t in ("semseg", "human_parts", "sal", "normals", "edge")
    )
    assert any("semseg/mIoU" in r for r in records)
    ckpt = torch.load(work_dir / "epoch_1.pth", map_location="cpu", weights_only=False)
    marker = "lora_" if method == "mtl-lora" else "prompt_"
    assert any(marker in key for key in ckpt["state_dict"]), method
    if method == "ta-lora-lookahead":
        assert ckpt["lookahead"]["num_steps"] == 2
    if method == "ta-lora-two-phase":
        log = next(work_dir.glob("*/*.log")).read_text()
        assert "Two-phase: phase one from epoch 1" in log
        assert "Two-phase: phase two from epoch 2" in log
