"""Per-task fusion and heads: shapes, parameter counts and the HRNet head's maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlora_vision.models.heads.builder import build_head
from mtlora_vision.models.heads.hrnet import HRNetHead, upsample_concat
from mtlora_vision.models.heads.mlp import MLPHead
from mtlora_vision.models.necks.fusion import MultiScaleFusion

SWIN_T = (192, 384, 768, 768)
PAPER = (18, 36, 72, 144)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def features(channels, batch=2, sizes=((16, 12), (8, 6), (4, 3), (4, 3))):
    return [torch.randn(batch, c, *s) for c, s in zip(channels, sizes, strict=True)]


def test_fusion_is_one_bias_free_conv_per_stage() -> None:
    fusion = MultiScaleFusion(SWIN_T, PAPER)
    # 192*18 + 384*36 + 768*72 + 768*144 (docs/model.md#decoder, #parameter-counts)
    assert n_params(fusion) == 183_168
    assert all(conv.bias is None for conv in fusion.convs)
    feats = features((4, 8, 8, 8))
    small = MultiScaleFusion((4, 8, 8, 8), 3)
    out = small(feats)
    assert [o.shape[1] for o in out] == [3, 3, 3, 3]
    expected = torch.einsum("oc,bchw->bohw", small.convs[1].weight[:, :, 0, 0], feats[1])
    torch.testing.assert_close(out[1], expected)
    with pytest.raises(ValueError, match="Expected 4 stage features"):
        small(feats[:3])
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        MultiScaleFusion(SWIN_T, [1, 2])


def test_hrnet_head_maths_and_size() -> None:
    head = HRNetHead(PAPER, num_outputs=21)
    assert head.conv.out_channels == 1080  # 4 * 270, as in the paper
    # 270*1080 + 1080 (conv) + 2*1080 (BN) + 1080*21 + 21 (classifier)
    assert n_params(head) == 270 * 1080 + 1080 + 2 * 1080 + 1080 * 21 + 21
    head = HRNetHead((2, 3, 4, 5), num_outputs=3, channels=6).eval()
    with torch.no_grad():
        head.norm.running_mean.normal_()
        head.norm.running_var.uniform_(0.5, 2.0)
    feats = features((2, 3, 4, 5))
    size = feats[0].shape[-2:]
    cat = torch.cat(
        [feats[0]]
        + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]],
        dim=1,
    )
    torch.testing.assert_close(upsample_concat(feats), cat)
    hidden = F.conv2d(cat, head.conv.weight, head.conv.bias)
    hidden = (hidden - head.norm.running_mean[:, None, None]) / torch.sqrt(
        head.norm.running_var[:, None, None] + head.norm.eps
    )
    hidden = F.relu(hidden * head.norm.weight[:, None, None] + head.norm.bias[:, None, None])
    expected = F.conv2d(hidden, head.classifier.weight, head.classifier.bias)
    torch.testing.assert_close(head(feats), expected, rtol=1e-5, atol=1e-5)


def test_mlp_head_shapes_and_size() -> None:
    head = MLPHead((2, 3, 4, 5), num_outputs=7, channels=8)
    out = head(features((2, 3, 4, 5)))
    assert out.shape == (2, 7, 16, 12)
    # projections (c*8 + 8 each), fuse 32*8, BN 2*8, classifier 8*7 + 7
    assert n_params(head) == (2 + 3 + 4 + 5) * 8 + 4 * 8 + 32 * 8 + 2 * 8 + 8 * 7 + 7


def test_build_head() -> None:
    assert isinstance(build_head({"type": "MLPHead", "channels": 4}, (2, 2), 3), MLPHead)
    head = build_head({"type": HRNetHead}, (2, 2), 5)
    assert isinstance(head, HRNetHead)
    assert head.classifier.out_channels == 5
    with pytest.raises(ValueError, match="'ASPPHead'"):
        build_head({"type": "ASPPHead"}, (2, 2), 3)
    with pytest.raises(ValueError, match="num_outputs"):
        HRNetHead((2, 2), num_outputs=0)
