"""MTL-LoRA and TA-LoRA demo twins train for two iterations through tools/train.py."""

from __future__ import annotations

import json

import pytest
import torch
from engine_utils import REPO, tiny_options
from tool_loader import load_tool

CONFIGS = {
    "mtl-lora": REPO / "configs/methods/demo/mtl-lora_demo.py",
    "ta-lora": REPO / "configs/methods/demo/ta-lora_demo.py",
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_demo_twin_trains_two_iterations(method, tmp_path):
    options = [o for o in tiny_options(tmp_path / "data") if not o.startswith("model.adapter.")]
    work_dir = tmp_path / "work"
    load_tool("train").main(
        [str(CONFIGS[method]), "--work-dir", str(work_dir), "--cfg-options", *options]
    )
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["step"] == 2
    assert all(
        f"loss_{t}" in steps[-1] for t in ("semseg", "human_parts", "sal", "normals", "edge")
    )
    assert any("semseg/mIoU" in r for r in records)
    ckpt = torch.load(work_dir / "epoch_1.pth", map_location="cpu", weights_only=False)
    marker = "lora_" if method == "mtl-lora" else "prompt_"
    assert any(marker in key for key in ckpt["state_dict"]), method
