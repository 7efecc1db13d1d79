"""HRNet-style dense prediction head, as used per task by MTLoRA (Agiza et al., CVPR 2024).

From HRNet (Wang et al., TPAMI 2020) via the multi-task baselines of Vandenhende et al. (TPAMI
2021), as in ``docs/model.md#decoder``: upsample every scale bilinearly (``align_corners=False``)
to the finest one, concatenate, 1x1 conv (with bias), BatchNorm, ReLU, 1x1 conv to the task's
outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_vision.recompute import lean_enabled, masked_scale, recomputable


def upsample_concat(feats: Sequence[Tensor]) -> Tensor:
    """Bilinearly upsample every map to the first (finest) one's size and concatenate channels.

    Args:
        feats: ``(B, C_s, H_s, W_s)`` per scale, finest first.

    Returns:
        ``(B, sum C_s, H_0, W_0)``.
    """
    size = feats[0].shape[-2:]
    resized = [feats[0]] + [
        F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]
    ]
    return torch.cat(resized, dim=1)


class HRNetHead(nn.Module):
    """Concatenate all scales, then 1x1 conv + BN + ReLU + 1x1 classifier.

    Args:
        in_channels: Channels per scale (finest first).
        num_outputs: Output channels ``K`` of the task.
        channels: Hidden channels; default ``4 * sum(in_channels)`` (1080 for the paper's 270).
    """

    def __init__(
        self, in_channels: Sequence[int], num_outputs: int, channels: int | None = None
    ) -> None:
        super().__init__()
        total = sum(in_channels)
        hidden = channels if channels is not None else 4 * total
        if num_outputs < 1 or hidden < 1:
            raise ValueError(
                f"HRNetHead needs num_outputs, channels >= 1; got {num_outputs}, {hidden}."
            )
        self.conv = nn.Conv2d(total, hidden, kernel_size=1)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(hidden, num_outputs, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Predict at the finest scale.

        Args:
            feats: ``(B, in_channels[s], H_s, W_s)`` per scale, finest first.

        Returns:
            ``(B, num_outputs, H_0, W_0)``.
        """
        return self.classifier(norm_relu(self.norm, self.act, self.conv(upsample_concat(feats))))


def norm_relu(norm: nn.BatchNorm2d, act: nn.Module, x: Tensor) -> Tensor:
    """``act(norm(x))`` for a ReLU ``act``, recomputed in the backward pass in lean mode.

    Under :func:`~mtlora_vision.recompute.lean_mode` the ReLU saves a bool mask (:func:`bn_relu`).
    """
    if not lean_enabled("heads"):
        return act(norm(x))
    return recomputable(bn_relu, norm, x, part="heads", recompute=bn_relu_again)


def bn_relu(norm: nn.BatchNorm2d, x: Tensor, again: bool = False) -> Tensor:
    """``relu(norm(x))`` as ``y * (y > 0)``: backward keeps the bool mask, not the output.

    ``again=True`` is the recomputation in the backward pass: in training mode it normalises
    with the batch statistics as the forward pass did but passes no running buffers, so they are
    updated once per step.
    """
    if again and norm.training:
        y = F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    else:
        y = norm(x)
    return masked_scale(y, y > 0)


def bn_relu_again(norm: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """:func:`bn_relu` as recomputed in the backward pass."""
    return bn_relu(norm, x, again=True)
