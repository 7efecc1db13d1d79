"""Tiny overrides of the demo config so Runner tests take seconds."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "mtlora_swin_demo.py")


def square_loss_model():
    """A one-layer mmengine model (4 inputs, loss = mean squared output) for Runner mechanics."""
    from mmengine.model import BaseModel
    from torch import nn

    class SquareLossModel(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def forward(self, inputs, mode="tensor"):
            out = self.layer(inputs)
            return {"loss": out.pow(2).mean()} if mode == "loss" else out

    return SquareLossModel()


TINY_ARCH = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


def write_tiny_pretrained(path: Path) -> Path:
    """Write random weights of the tiny Swin in timm's layout, standing in for ImageNet weights."""
    import torch

    from mtlora_vision.models.backbones.swin import SwinBackbone

    torch.manual_seed(123)
    torch.save(
        {"model": SwinBackbone(arch=TINY_ARCH, img_size=64, window_size=4).state_dict()}, path
    )
    return path


def tiny_options(
    data_root: Path, epochs: int = 1, workers: int = 0, pretrained: Path | None = None
) -> list[str]:
    """``--cfg-options`` for a tiny five-task run on synthetic data written into ``data_root``."""
    opts = [
        f"model.backbone.pretrained={pretrained}",
        "model.backbone.arch.embed_dim=16",
        "model.backbone.arch.depths=(1,1,1,1)",
        "model.backbone.arch.num_heads=(1,1,2,2)",
        "model.backbone.img_size=64",
        "model.adapter.shared_rank=2",
        "model.adapter.task_rank=1",
        "model.adapter.dropout=0.0",
        "model.fusion.channels=(4,4,8,8)",
        f"train_cfg.max_epochs={epochs}",
        "train_cfg.val_interval=1",
        "default_hooks.checkpoint.interval=1",
        "default_hooks.logger.interval=1",
        "param_scheduler.1.T_max=1",
        f"param_scheduler.1.end={max(epochs, 2)}",
    ]
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts += [
            f"{loader}.batch_size=2",
            f"{loader}.num_workers={workers}",
            f"{loader}.persistent_workers=False",
            f"{loader}.dataset.data_root={data_root}",
            f"{loader}.dataset.img_size=(64,64)",
            f"{loader}.dataset.synthesize_if_missing.root={data_root}",
            f"{loader}.dataset.synthesize_if_missing.num_train=4",
            f"{loader}.dataset.synthesize_if_missing.num_val=2",
            f"{loader}.dataset.synthesize_if_missing.size=(48,64)",
            f"{loader}.dataset.cache_dir={data_root.parent / 'cache'}",
        ]
    return opts
