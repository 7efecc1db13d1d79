"""Per-task multi-scale fusion ("downsampler") of MTLoRA (Agiza et al., CVPR 2024).

Each task reduces the channels of its four stage features with one 1x1 convolution without bias
per stage (Swin-T: ``[192, 384, 768, 768] -> [18, 36, 72, 144]``) before its head
(``docs/model.md#decoder``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlora_vision.adapters.config import per_stage


class MultiScaleFusion(nn.Module):
    """One 1x1 convolution (no bias) per stage.

    Args:
        in_channels: Channels of each stage feature.
        out_channels: Channels after the convolution, an int for all stages or one per stage.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int | Sequence[int]) -> None:
        super().__init__()
        outs = per_stage(out_channels, len(in_channels), "fusion channels")
        bad = [c for c in (*in_channels, *outs) if not isinstance(c, int) or c < 1]
        if bad:
            raise ValueError(f"Fusion channels must be positive integers, got {bad}.")
        self.in_channels = tuple(in_channels)
        self.out_channels = tuple(outs)
        self.convs = nn.ModuleList(
            nn.Conv2d(i, o, kernel_size=1, bias=False)
            for i, o in zip(in_channels, outs, strict=True)
        )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Reduce each stage feature.

        Args:
            feats: ``(B, in_channels[s], H_s, W_s)`` per stage.

        Returns:
            ``(B, out_channels[s], H_s, W_s)`` per stage.
        """
        if len(feats) != len(self.convs):
            raise ValueError(f"Expected {len(self.convs)} stage features, got {len(feats)}.")
        return [conv(f) for conv, f in zip(self.convs, feats, strict=True)]
