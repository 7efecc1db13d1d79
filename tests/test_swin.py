"""Swin backbone: window maths against timm, shapes, input sizes, pretrained loading."""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.swin_transformer import (
    SwinTransformerBlock,
    get_relative_position_index,
    window_partition,
)

from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.models.backbones import swin_blocks
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.backbones.swin_blocks import (
    MASK_VALUE,
    block_forward,
    effective_window,
    from_windows,
    relative_position_index,
    to_windows,
    window_geometry,
)
from mtlora_vision.models.backbones.swin_checkpoint import (
    filter_swin_checkpoint,
    official_to_timm_key,
    timm_to_official_key,
)

TINY = {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4)}
CPU = torch.device("cpu")


def tiny_backbone(**kwargs) -> SwinBackbone:
    options = {"arch": TINY, "img_size": 64, "window_size": 4, "drop_path_rate": 0.0}
    options.update(kwargs)
    return SwinBackbone(**options).eval()


def test_effective_window_rules() -> None:
    assert effective_window((14, 14), (7, 7), True) == ((7, 7), (3, 3))
    assert effective_window((14, 14), (7, 7), False) == ((7, 7), (0, 0))
    assert effective_window((4, 4), (7, 7), True) == ((4, 4), (0, 0))
    assert effective_window((4, 16), (7, 7), True) == ((4, 7), (0, 3))


def test_shift_mask_is_timms_and_the_official_one() -> None:
    block = SwinTransformerBlock(
        dim=8, input_resolution=(14, 14), num_heads=2, window_size=7, shift_size=3
    )
    geom = window_geometry((14, 14), (7, 7), True, CPU, torch.float32)
    assert torch.equal(geom.mask, block.attn_mask)  # same pairs, same value (-100)
    assert MASK_VALUE == -100.0
    assert window_geometry((14, 14), (7, 7), False, CPU, torch.float32).mask is None


def test_masked_pairs_far_above_the_allowed_ones_pass_as_in_the_official_model() -> None:
    # A masked logit 95 above the allowed ones keeps weight exp(-5) / (2 + exp(-5)), as in the
    # official Swin; a larger mask magnitude (e.g. -1e4) would give it exactly 0.
    scores = torch.zeros(1, 3)
    scores[0, 2] = 95.0  # key 2 is masked
    weights = (scores + torch.tensor([0.0, 0.0, MASK_VALUE])).softmax(-1)
    assert weights[0, 2].item() == pytest.approx(math.exp(-5) / (2 + math.exp(-5)), rel=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_block_with_trained_size_logits_equals_timm(fused: bool) -> None:
    """One relative offset (a horizontal neighbour) gets bias 100: at a region border of a shifted
    window that neighbour is masked and exceeds every allowed logit of the row by more than 80,
    the regime of trained models, where the mask value decides the output."""
    block = SwinTransformerBlock(
        dim=16, input_resolution=(14, 14), num_heads=2, window_size=7, shift_size=3
    )
    with torch.no_grad():
        block.attn.relative_position_bias_table.zero_()
        block.attn.relative_position_bias_table[6 * 13 + 7] = 100.0  # offset (0, 1)
    geom = window_geometry((14, 14), (7, 7), True, CPU, torch.float32)
    index = swin_blocks.constant_relative_position_index((7, 7), (7, 7), CPU)
    bias = block.attn.relative_position_bias_table.detach()[index].view(49, 49, 2).permute(2, 0, 1)
    masked = geom.mask.unsqueeze(1) != 0  # nW, 1, N, N
    allowed_max = bias.masked_fill(masked, -math.inf).amax(-1, keepdim=True)
    assert (bias.masked_fill(~masked, -math.inf) > allowed_max + 85).any()
    x = torch.randn(2, 14, 14, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(block_forward(block, x, fused), block(x), rtol=1e-5, atol=1e-5)


def test_relative_position_index() -> None:
    full = relative_position_index((7, 7), (7, 7), CPU)
    torch.testing.assert_close(full, get_relative_position_index(7, 7).flatten(), rtol=0, atol=0)
    # A 2x2 window inside a table built for 3x3 (5x5 offsets): offset (0, 0) is the centre 12,
    # token 0 = (0, 0) against token 3 = (1, 1) is offset (-1, -1) -> (1 * 5) + 1 = 6.
    small = relative_position_index((2, 2), (3, 3), CPU).view(4, 4)
    assert small.diagonal().tolist() == [12, 12, 12, 12]
    assert small[0, 3].item() == 6
    assert small[3, 0].item() == 18


def test_windows_match_roll_and_partition_and_invert() -> None:
    x = torch.randn(2, 14, 14, 5)
    geom = window_geometry((14, 14), (7, 7), True, CPU, x.dtype)
    expected = window_partition(torch.roll(x, (-3, -3), (1, 2)), (7, 7)).flatten(1, 2)
    torch.testing.assert_close(to_windows(x, geom), expected, rtol=0, atol=0)
    torch.testing.assert_close(from_windows(expected, geom, (14, 14)), x, rtol=0, atol=0)
    padded = torch.randn(3, 10, 9, 4)
    geom = window_geometry((10, 9), (4, 4), True, CPU, x.dtype)
    assert geom.padded == (12, 12)
    windows = to_windows(padded, geom)
    assert windows.shape == (3 * 9, 16, 4)
    torch.testing.assert_close(from_windows(windows, geom, (10, 9)), padded, rtol=0, atol=0)


def test_window_gradients_match_roll_and_partition() -> None:
    x = torch.randn(2, 14, 14, 5, requires_grad=True)
    weight = torch.randn(2 * 4, 49, 5)
    geom = window_geometry((14, 14), (7, 7), True, CPU, x.dtype)
    ours = torch.autograd.grad((to_windows(x, geom) * weight).sum(), x)[0]
    reference = window_partition(torch.roll(x, (-3, -3), (1, 2)), (7, 7)).flatten(1, 2)
    torch.testing.assert_close(ours, torch.autograd.grad((reference * weight).sum(), x)[0])
    windows = torch.randn(3 * 9, 16, 4, requires_grad=True)  # padded grid: cropped tokens get 0
    geom = window_geometry((10, 9), (4, 4), True, CPU, x.dtype)
    grad = torch.autograd.grad(from_windows(windows, geom, (10, 9)).sum(), windows)[0]
    assert grad.sum().item() == 3 * 10 * 9 * 4
    assert set(grad.unique().tolist()) == {0.0, 1.0}


def test_padding_keys_are_masked() -> None:
    geom = window_geometry((5, 5), (4, 4), False, CPU, torch.float32)
    allowed = (geom.mask == 0).sum(-1)  # nW, N: keys each query may attend to
    # Windows: top-left holds 4x4 real tokens, top-right 4x1, bottom-left 1x4, bottom-right 1x1.
    assert allowed[:, 0].tolist() == [16, 4, 4, 1]
    assert (allowed == allowed[:, :1]).all()


@pytest.mark.parametrize("fused", [True, False])
def test_block_forward_equals_timm(fused: bool) -> None:
    block = SwinTransformerBlock(
        dim=16, input_resolution=(14, 14), num_heads=2, window_size=7, shift_size=3
    )
    torch.nn.init.normal_(block.attn.relative_position_bias_table)
    x = torch.randn(2, 14, 14, 16)
    torch.testing.assert_close(block_forward(block, x, fused), block(x), rtol=1e-5, atol=1e-5)


def test_fused_attention_gradients_match_unfused() -> None:
    block = SwinTransformerBlock(
        dim=16, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2
    )
    torch.nn.init.normal_(block.attn.relative_position_bias_table)
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    grads = []
    for fused in (True, False):
        out = block_forward(block, x, fused)
        params = [x, block.attn.relative_position_bias_table, block.attn.qkv.weight]
        grads.append(torch.autograd.grad(out.square().sum(), params))
    for fused_grad, plain_grad in zip(*grads, strict=True):
        assert plain_grad.abs().sum() > 0
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 32)])
@pytest.mark.parametrize("tasks", [("semseg",), ("semseg", "normals", "sal")])
def test_backbone_shapes(size: tuple[int, int], tasks: tuple[str, ...]) -> None:
    adapter = MTLoRAConfig(shared_rank=2, task_rank=1, dropout=0.0)
    backbone = tiny_backbone(tasks=tasks, adapter=adapter)
    feats = backbone(torch.randn(2, 3, *size))
    assert len(feats) == len(backbone.feature_info) == 4
    for feat, info in zip(feats, backbone.feature_info, strict=True):
        expected = (
            len(tasks),
            2,
            info["num_chs"],
            size[0] // info["reduction"],
            size[1] // info["reduction"],
        )
        assert feat.shape == expected
    assert [i["num_chs"] for i in backbone.feature_info] == [48, 96, 192, 192]
    assert [i["reduction"] for i in backbone.feature_info] == [8, 16, 32, 32]


def test_without_adapters_every_task_shares_the_features() -> None:
    backbone = tiny_backbone(tasks=("semseg", "sal"))
    feats = backbone(torch.randn(1, 3, 64, 64))
    for feat in feats:
        assert feat[0].data_ptr() == feat[1].data_ptr()  # one computation, expanded


@pytest.mark.parametrize("size", [(60, 64), (64, 48)])
def test_bad_input_size_is_refused(size: tuple[int, int]) -> None:
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]} is not a multiple of 32"):
        backbone(torch.randn(1, 3, *size))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        backbone(torch.randn(1, 1, 64, 64))


def test_checkpoint_key_maps() -> None:
    assert (
        official_to_timm_key("layers.0.downsample.norm.weight") == "layers.1.downsample.norm.weight"
    )
    assert (
        official_to_timm_key("layers.2.blocks.1.norm1.weight") == "layers.2.blocks.1.norm1.weight"
    )
    assert (
        timm_to_official_key("layers.3.downsample.reduction.weight")
        == "layers.2.downsample.reduction.weight"
    )
    state = {
        "layers.0.downsample.reduction.weight": torch.zeros(1),
        "layers.0.blocks.0.attn.qkv.weight": torch.zeros(1),
        "layers.0.blocks.0.attn.relative_position_index": torch.zeros(1),
        "layers.0.blocks.1.attn_mask": torch.zeros(1),
        "head.weight": torch.zeros(1),
        "norm.bias": torch.zeros(1),
    }
    out, dropped = filter_swin_checkpoint({"model": state}, ["layers.0.blocks.0.attn.qkv"])
    assert sorted(out) == [
        "layers.0.blocks.0.attn.qkv.base_layer.weight",
        "layers.1.downsample.reduction.weight",
    ]
    assert dropped == sorted(
        set(state) - {"layers.0.downsample.reduction.weight", "layers.0.blocks.0.attn.qkv.weight"}
    )


def official_layout(backbone: SwinBackbone) -> dict:
    """What Microsoft's release file holds: merging at stage end, buffers, final norm and head."""
    state = {timm_to_official_key(k): v.clone() for k, v in backbone.state_dict().items()}
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    state["layers.0.blocks.0.attn_mask"] = torch.zeros(16, 16, 16)
    state["norm.weight"], state["norm.bias"] = torch.ones(192), torch.zeros(192)
    state["head.weight"], state["head.bias"] = torch.zeros(10, 192), torch.zeros(10)
    return {"model": state}


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_pretrained_loading_is_strict_and_exact(tmp_path, layout: str) -> None:
    source = tiny_backbone()
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path / "swin.pth"
    checkpoint = official_layout(source) if layout == "official" else source.state_dict()
    torch.save(checkpoint, path)
    adapter = MTLoRAConfig(shared_rank=2, task_rank=1, dropout=0.0, adapt_downsample=True)
    loaded = tiny_backbone(tasks=("semseg", "sal"), adapter=adapter, pretrained=str(path))
    x = torch.randn(1, 3, 64, 64)
    expected = source(x)[3][0]
    for feat in loaded(x)[3]:  # identity at step 0: adapters start at zero
        torch.testing.assert_close(feat, expected, rtol=1e-5, atol=1e-5)


def test_pretrained_loading_errors(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        tiny_backbone(pretrained=str(missing))
    source = tiny_backbone()
    state = source.state_dict()
    state["layers.0.blocks.0.attn.q_bias"] = torch.zeros(24)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match=r"unexpected \['layers\.0\.blocks\.0\.attn\.q_bias'\]"):
        tiny_backbone(pretrained=str(tmp_path / "extra.pth"))
    del state["layers.0.blocks.0.attn.q_bias"], state["patch_embed.proj.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(KeyError, match=r"missing \['patch_embed\.proj\.bias'\]"):
        tiny_backbone(pretrained=str(tmp_path / "short.pth"))
    torch.save(tiny_backbone(window_size=7).state_dict(), tmp_path / "w7.pth")
    with pytest.raises(ValueError, match=r"relative_position_bias_table: \(169, 1\) vs \(49, 1\)"):
        tiny_backbone(pretrained=str(tmp_path / "w7.pth"))
