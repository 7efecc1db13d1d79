"""The factored (low-rank) task branch used at inference equals the direct per-task path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from live_tensors import LiveTensors

from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.adapters.merge import merge_adapters
from mtlora_vision.adapters.mtlora import MTLoRALinear
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.backbones.swin_blocks import patch_merge
from mtlora_vision.models.backbones.task_branch import (
    TaskStreams,
    norm_project_down,
    patch_merge_task_streams,
)

TASKS = ("semseg", "human_parts", "sal")
ARCH = {"embed_dim": 24, "depths": (1, 2, 1, 2), "num_heads": (1, 2, 2, 4)}


def randomise(backbone: SwinBackbone) -> None:
    """Non-zero adapters and non-trivial LayerNorms (weight 1 / bias 0 would hide mistakes)."""
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_" in name or "relative_position" in name:
                p.normal_(std=0.2)
            elif "norm" in name:
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.3)


def make_backbone(**adapter_kwargs) -> SwinBackbone:
    options = dict(shared_rank=3, task_rank=2, shared_scale=4.0, task_scale=3.0, dropout=0.0)
    options.update(adapter_kwargs)
    backbone = SwinBackbone(
        arch=ARCH,
        img_size=96,
        window_size=4,
        drop_path_rate=0.0,
        tasks=TASKS,
        adapter=MTLoRAConfig(**options),
    )
    randomise(backbone)
    return backbone.eval()


def direct(backbone: SwinBackbone, images: torch.Tensor) -> list[torch.Tensor]:
    backbone.factored_task_branch = False
    try:
        return backbone(images)
    finally:
        backbone.factored_task_branch = True


def assert_features_close(ours, expected, tol: float = 1e-5) -> None:
    for a, b in zip(ours, expected, strict=True):
        assert a.shape == b.shape
        assert ((a - b).norm() / b.norm()).item() < tol


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mode": "matrixv2"},
        {"adapt_downsample": True},
        {"shared_rank": (2, 3, 4, 5), "task_rank": 3},
    ],
    ids=["matrix", "matrixv2", "mtlora-plus", "per-stage-ranks"],
)
@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_factored_branch_equals_direct_path(options, merged) -> None:
    backbone = make_backbone(**options)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = direct(backbone, images)
        if merged:
            assert merge_adapters(backbone) > 0
        ours = backbone(images)
    assert_features_close(ours, expected)
    # The features really are task-specific (a shared copy would also "match" a broken branch).
    assert not torch.allclose(ours[1][0], ours[1][1], atol=1e-3)


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_factored_branch_never_forms_the_task_hidden_tensors(merged) -> None:
    # fc1's task outputs reach fc2 in low-rank form, the GELU fused with fc2's task
    # down-projections one task at a time: no (T, B, H, W, 4C) tensor is created in any stage.
    backbone = make_backbone()
    if merged:
        merge_adapters(backbone)
    with torch.no_grad(), LiveTensors() as tracker:
        backbone(torch.randn(2, 3, 96, 96))
    T = len(TASKS)
    hidden = [
        (T * 2 * side * side * 4 * c, 4 * c) for side, c in ((24, 24), (12, 48), (6, 96), (3, 192))
    ]
    created = [(math.prod(shape), shape[-1]) for shape in tracker.created if shape]
    assert [size for size in hidden if size in created] == []
    assert (2 * 24 * 24 * 4 * 24, 4 * 24) in created  # stage 0's shared hidden tensor: it is seen


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_factored_branch_normalises_only_the_shared_stream(merged) -> None:
    # fc1's task down-projections come from the factors of norm2's task inputs: the T task
    # streams are never normalised (nor formed for it) in a task branch.
    backbone = make_backbone()
    if merged:
        merge_adapters(backbone)
    shapes = []
    for stage in backbone.layers:
        stage.blocks[-1].norm2.register_forward_hook(
            lambda m, args, out: shapes.append(args[0].shape)
        )
    with torch.no_grad():
        backbone(torch.randn(2, 3, 96, 96))
    assert shapes == [(2, side, side, c) for side, c in ((24, 24), (12, 48), (6, 96), (3, 192))]


@pytest.mark.parametrize("affine", [True, False])
def test_norm_project_down_is_exact_for_offset_streams(affine) -> None:
    # LayerNorm then a per-task map from the factors equals the map of the expanded streams,
    # also with a large common offset and small task parts (no cancellation in the variance).
    T, B, H, W, C, q, r = 3, 2, 4, 5, 8, 5, 2
    streams = TaskStreams(
        40.0 + torch.randn(B, H, W, C, dtype=torch.float64),
        torch.randn(T, B, H, W, q, dtype=torch.float64),
        0.1 * torch.randn(T, C, q, dtype=torch.float64),
    )
    norm = torch.nn.LayerNorm(C, elementwise_affine=affine, dtype=torch.float64)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    a = torch.randn(T, r, C, dtype=torch.float64)
    expected = torch.einsum("tbhwc,trc->tbhwr", norm(streams.expand()), a)
    got = norm_project_down(norm, streams, a).coeffs
    torch.testing.assert_close(got, expected)
    # float32 stays within float32 rounding of the float64 result.
    ours32 = norm_project_down(norm.float(), TaskStreams(*(t.float() for t in streams)), a.float())
    assert ((ours32.coeffs.double() - expected).norm() / expected.norm()).item() < 1e-5


def test_addition_mode_and_training_use_the_direct_path() -> None:
    backbone = make_backbone(mode="addition")
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_features_close(backbone(images), direct(backbone, images))
    # Train mode without DropPath and dropout computes the same function by the direct path.
    backbone = make_backbone()
    with torch.no_grad():
        factored = backbone(images)
        backbone.train()
        trained = backbone(images)
    assert_features_close(factored, trained)


def test_gradients_through_the_factored_branch_match() -> None:
    # Inference path with autograd on (e.g. feature attribution): the same gradients as the
    # direct path. In float64, so that any difference is the algebra's, not float32 rounding.
    backbone = make_backbone().double()
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    grads = []
    for factored in (True, False):
        backbone.factored_task_branch = factored
        backbone.zero_grad()
        sum(f.square().mean() for f in backbone(images)).backward()
        grads.append({n: p.grad for n, p in backbone.named_parameters() if "lora" in n})
    # The shared fc2 update of the very last block reaches no task feature
    # (docs/model.md#stage-outputs).
    unused = {n for n, g in grads[1].items() if g is None}
    assert unused == {
        "layers.3.blocks.1.mlp.fc2.lora_shared_a",
        "layers.3.blocks.1.mlp.fc2.lora_shared_b",
    }
    for name, grad in grads[1].items():
        if name not in unused:
            torch.testing.assert_close(grads[0][name], grad, rtol=1e-9, atol=1e-12, msg=name)


def relative_errors(ours, expected) -> list[float]:
    return [((a.float() - b).norm() / b.norm()).item() for a, b in zip(ours, expected, strict=True)]


def test_bf16_autocast_is_as_accurate_as_the_direct_path() -> None:
    backbone = make_backbone()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        exact = backbone(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = backbone(images)
            theirs = direct(backbone, images)
    ours_err, theirs_err = relative_errors(ours, exact), relative_errors(theirs, exact)
    for stage, (a, b) in enumerate(zip(ours_err, theirs_err, strict=True)):
        assert a < 2 * b + 1e-3, (stage, ours_err, theirs_err)


def test_merge_from_factors_is_exact_for_offset_streams() -> None:
    # Large common offsets and small task parts: the variance must not cancel catastrophically.
    T, B, H, W, C, q = 3, 2, 4, 6, 8, 5
    base = 50.0 + torch.randn(B, H, W, C, dtype=torch.float64)
    streams = TaskStreams(
        base,
        torch.randn(T, B, H, W, q, dtype=torch.float64),
        0.1 * torch.randn(T, C, q, dtype=torch.float64),
    )
    merge = torch.nn.Module()
    merge.norm = torch.nn.LayerNorm(4 * C, dtype=torch.float64)
    merge.reduction = torch.nn.Linear(4 * C, 2 * C, bias=True, dtype=torch.float64)
    with torch.no_grad():
        merge.norm.weight.normal_(1.0, 0.3)
        merge.norm.bias.normal_(0.0, 0.3)
    expected = patch_merge(merge, streams.expand().flatten(0, 1)).view(T, B, H // 2, W // 2, -1)
    torch.testing.assert_close(patch_merge_task_streams(merge, streams), expected)
    # The same in float32 stays within float32 rounding of the float64 result.
    merge32 = merge.float()
    streams32 = TaskStreams(*(t.float() for t in streams))
    ours32 = patch_merge_task_streams(merge32, streams32).double()
    assert ((ours32 - expected).norm() / expected.norm()).item() < 1e-5


def test_factored_expansion_is_the_task_stream() -> None:
    base, coeffs, factors = (
        torch.randn(2, 3, 4, 5),
        torch.randn(3, 2, 3, 4, 2),
        torch.randn(3, 5, 2),
    )
    streams = TaskStreams(base, coeffs, factors).expand()
    for t in range(3):
        torch.testing.assert_close(streams[t], base + F.linear(coeffs[t], factors[t]))


@pytest.mark.parametrize("mode", ["matrix", "matrixv2", "addition"])
def test_task_factors_expand_to_forward_tasks(mode) -> None:
    layer = MTLoRALinear(torch.nn.Linear(6, 5), 3, tasks=("a", "b"), task_rank=2, mode=mode)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "lora_" in name:
                p.normal_()
    layer.eval()
    x, task_x = torch.randn(4, 6), torch.randn(2, 4, 6)
    for inputs in ((x,), (x, task_x)):
        parts, full = layer.forward_task_factors(*inputs), layer.forward_tasks(*inputs)
        torch.testing.assert_close(TaskStreams(*parts[1:]).expand(), full.tasks)
        if mode != "addition":
            torch.testing.assert_close(parts.shared, full.shared)
        # matrixv2's task outputs start from the shared output, and in addition mode the factors'
        # shared entry is the frozen projection the tasks start from: the same tensor, not a copy.
        assert (parts.base is parts.shared) == (mode != "matrix")
