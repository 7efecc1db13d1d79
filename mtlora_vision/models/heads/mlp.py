"""SegFormer-style all-MLP head (Xie et al., SegFormer, NeurIPS 2021), a light alternative head.

Each scale gets its own 1x1 projection (with bias) to a common width; the projections are upsampled
bilinearly to the finest scale, concatenated, fused by a 1x1 conv + BatchNorm + ReLU, and a 1x1
conv predicts the task's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlora_vision.models.heads.hrnet import norm_relu, upsample_concat


class MLPHead(nn.Module):
    """Per-scale linear projection, upsample, concatenate, fuse, classify.

    Args:
        in_channels: Channels per scale (finest first).
        num_outputs: Output channels ``K`` of the task.
        channels: Width of every projected scale and of the fused map.
    """

    def __init__(self, in_channels: Sequence[int], num_outputs: int, channels: int = 64) -> None:
        super().__init__()
        if num_outputs < 1 or channels < 1:
            raise ValueError(
                f"MLPHead needs num_outputs, channels >= 1; got {num_outputs}, {channels}."
            )
        self.projs = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in in_channels)
        self.fuse = nn.Conv2d(channels * len(in_channels), channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(channels, num_outputs, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Predict at the finest scale.

        Args:
            feats: ``(B, in_channels[s], H_s, W_s)`` per scale, finest first.

        Returns:
            ``(B, num_outputs, H_0, W_0)``.
        """
        if len(feats) != len(self.projs):
            raise ValueError(f"Expected {len(self.projs)} scales, got {len(feats)}.")
        x = upsample_concat([proj(f) for proj, f in zip(self.projs, feats, strict=True)])
        return self.classifier(norm_relu(self.norm, self.act, self.fuse(x)))
