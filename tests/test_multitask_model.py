"""MultiTaskModel: outputs, errors, trainable policy, identity at step 0, merging, param formula."""

from __future__ import annotations

import collections

import pytest
import torch
from mmengine.model import BaseDataPreprocessor

from mtlora_vision.adapters.config import LoRAConfig, MTLoRAConfig
from mtlora_vision.adapters.merge import merge_adapters, unmerge_adapters
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.heads.mlp import MLPHead
from mtlora_vision.models.multitask import MultiTaskModel

ARCH = {"embed_dim": 24, "depths": (2, 1, 2, 1), "num_heads": (1, 2, 2, 4)}
PASCAL = ("semseg", "human_parts", "sal", "normals")
FUSION = (4, 4, 8, 8)


def build(tasks=PASCAL, adapter="default", **kwargs) -> MultiTaskModel:
    if adapter == "default":
        adapter = {"type": MTLoRAConfig, "shared_rank": 4, "task_rank": 2, "dropout": 0.0}
    options = {
        "tasks": tasks,
        "backbone": {
            "type": SwinBackbone,
            "arch": ARCH,
            "img_size": 64,
            "window_size": 4,
            "drop_path_rate": 0.0,
        },
        "adapter": adapter,
        "fusion": {"channels": FUSION},
    }
    options.update(kwargs)
    return MultiTaskModel(**options)


def randomise_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.05)


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
@pytest.mark.parametrize("tasks", [("semseg",), PASCAL])
def test_tensor_mode_outputs(size, tasks) -> None:
    model = build(tasks).eval()
    out = model(torch.randn(2, 3, *size), mode="tensor")
    expected = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3}
    assert list(out) == list(tasks)
    for task, logits in out.items():
        assert logits.shape == (2, expected[task], *size)
    assert isinstance(model.data_preprocessor, BaseDataPreprocessor)


def test_num_outputs_heads_and_dataset_defaults() -> None:
    model = build(
        ("semseg", "depth"),
        dataset="nyud",
        num_outputs={"depth": 2},
        heads={"default": {"type": HRNetHead}, "depth": {"type": "MLPHead", "channels": 8}},
    )
    assert model.num_outputs == {"semseg": 40, "depth": 2}
    assert isinstance(model.heads["semseg"], HRNetHead)
    assert isinstance(model.heads["depth"], MLPHead)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tasks": ("semseg", "depthh")}, ValueError, "depthh"),
        (
            {"adapter": {"type": "mtlora", "shared_rank": 0}},
            ValueError,
            r"shared_rank=\[0, 0, 0, 0\]",
        ),
        (
            {"adapter": {"type": "mtlora", "task_rank": [2, 2, 2, -1]}},
            ValueError,
            r"task_rank=\[2, 2, 2, -1\]",
        ),
        ({"num_outputs": {"edge": 1}}, KeyError, "edge"),
        ({"heads": {"sall": {"type": HRNetHead}}}, KeyError, "sall"),
        ({"trainable": {"norm": False}}, KeyError, "norm"),
        ({"fusion": {"channels": FUSION, "type": "x"}}, KeyError, "type"),
        ({"dataset": "cityscapes"}, KeyError, "cityscapes"),
    ],
)
def test_bad_configuration_is_refused(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        build(**kwargs)


def test_bad_inputs_and_modes() -> None:
    model = build(("sal",)).eval()
    with pytest.raises(ValueError, match="80x64 is not a multiple of 32"):
        model(torch.randn(1, 3, 80, 64))
    with pytest.raises(KeyError, match="targets\\['sal'\\]"):
        model(torch.randn(1, 3, 64, 64), [{}], mode="loss")
    with pytest.raises(ValueError, match="needs data_samples"):
        model(torch.randn(1, 3, 64, 64), None, mode="loss")
    with pytest.raises(ValueError, match="'logits'"):
        model(torch.randn(1, 3, 64, 64), mode="logits")


@pytest.mark.parametrize("trainable", [None, {"norms": False, "rel_pos": False}])
def test_gradients_reach_exactly_the_trainable_parameters(trainable) -> None:
    model = build(trainable=trainable).train()
    randomise_adapters(model)
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out.values()).backward()
    groups = model.parameter_groups()
    # As in the official model, the shared output of the very last block feeds nothing (decoders
    # read task features), so the shared fc2 adapter there gets no gradient; it is still counted.
    last = f"backbone.layers.3.blocks.{ARCH['depths'][3] - 1}.mlp.fc2.lora_shared_"
    for name, p in model.named_parameters():
        reached = p.requires_grad and not name.startswith(last)
        assert (p.grad is not None) == reached, name
        if reached:
            assert p.grad.abs().sum() > 0, name
    trainable_groups = {groups[n] for n, p in model.named_parameters() if p.requires_grad}
    expected = {"adapters", "patch_embed", "norms", "rel_pos", "downsample", "decoder"}
    if trainable:
        expected -= {"norms", "rel_pos"}
    assert trainable_groups == expected
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "backbone.layers.0.blocks.0.attn.qkv.base_layer.weight" in frozen
    assert "backbone.layers.0.blocks.0.attn.qkv.base_layer.bias" in frozen


def copy_into_plain(adapted: MultiTaskModel, plain: MultiTaskModel) -> None:
    state = {
        k.replace(".base_layer", ""): v
        for k, v in adapted.state_dict().items()
        if ".lora_" not in k
    }
    plain.load_state_dict(state)


@pytest.mark.parametrize("adapt_downsample", [False, True])
def test_identity_at_step_zero(adapt_downsample) -> None:
    adapted = build(
        adapter={"type": "mtlora", "shared_rank": 4, "adapt_downsample": adapt_downsample}
    ).eval()
    plain = build(adapter=None).eval()
    copy_into_plain(adapted, plain)
    x = torch.randn(2, 3, 64, 64)
    expected = plain(x)
    for task, logits in adapted(x).items():
        torch.testing.assert_close(logits, expected[task], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adapter", ["mtlora", "mtlora+", "matrixv2", "lora"])
def test_merged_model_gives_the_same_outputs(adapter) -> None:
    cfg = {
        "mtlora": {"type": "mtlora", "shared_rank": 4},
        "mtlora+": {"type": "mtlora", "shared_rank": 4, "adapt_downsample": True},
        "matrixv2": {"type": "mtlora", "shared_rank": 4, "mode": "matrixv2"},
        "lora": {"type": LoRAConfig, "rank": 4, "adapt_downsample": True},
    }[adapter]
    model = build(adapter=cfg).eval()
    randomise_adapters(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert merge_adapters(model) > 0
        after = model(x)
        for task in before:
            error = (after[task] - before[task]).norm() / before[task].norm()
            assert error <= 1e-5, (task, error)
        unmerge_adapters(model)
        for task, logits in model(x).items():
            assert (logits - before[task]).norm() / before[task].norm() <= 1e-5


def closed_form_trainable(arch, window, tasks, r, r_t, fusion, outputs, plus=False) -> int:
    """docs/model.md#parameter-counts for any Swin: adapters + non-adapter backbone + decoder."""
    dims = [arch["embed_dim"] * 2**i for i in range(4)]
    depths, heads = arch["depths"], arch["num_heads"]
    shared = sum(16 * c * r * d for c, d in zip(dims, depths, strict=True))
    task = len(tasks) * sum(12 * c * r_t for c in dims)
    merging_lora = sum(6 * c * r for c in dims[:3]) if plus else 0
    patch_embed = 3 * 4 * 4 * dims[0] + dims[0] + 2 * dims[0]
    block_norms = sum(4 * c * d for c, d in zip(dims, depths, strict=True))
    rel_pos = sum((2 * window - 1) ** 2 * h * d for h, d in zip(heads, depths, strict=True))
    merging_norms = sum(2 * 4 * c for c in dims[:3])
    reductions = 0 if plus else sum(4 * c * 2 * c for c in dims[:3])
    in_ch = [*dims[1:], dims[-1]]
    fusion_params = sum(i * o for i, o in zip(in_ch, fusion, strict=True))
    hidden = 4 * sum(fusion)
    decoder = sum(
        fusion_params + sum(fusion) * hidden + 3 * hidden + hidden * k + k for k in outputs
    )
    backbone = patch_embed + block_norms + rel_pos + merging_norms + reductions
    return shared + task + merging_lora + backbone + decoder


@pytest.mark.parametrize("plus", [False, True])
def test_trainable_count_matches_formula(plus) -> None:
    model = build(
        adapter={"type": "mtlora", "shared_rank": 6, "task_rank": 3, "adapt_downsample": plus}
    )
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == closed_form_trainable(ARCH, 4, PASCAL, 6, 3, FUSION, (21, 7, 1, 3), plus)


def test_lora_only_shares_features_across_tasks() -> None:
    model = build(("semseg", "sal"), adapter={"type": "lora", "rank": 2}).eval()
    feats = model.backbone(torch.randn(1, 3, 64, 64))
    assert all(f[0].data_ptr() == f[1].data_ptr() for f in feats)
    assert not model.backbone.task_branching


def test_bf16_autocast_training_and_merged_inference() -> None:
    model = build().train()
    randomise_adapters(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    sum(o.float().square().mean() for o in out.values()).backward()
    assert model.backbone.layers[0].blocks[1].mlp.fc1.lora_tasks_b["sal"].grad is not None
    model.eval()
    with torch.no_grad():
        reference = model(x)
        merge_adapters(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            merged = model(x)
    for task, logits in merged.items():
        assert (logits.float() - reference[task]).norm() / reference[task].norm() < 0.05


def _backward_node_names(outputs: dict[str, torch.Tensor]) -> collections.Counter:
    """Names of the autograd nodes reachable from ``outputs``, counted."""
    seen, stack, names = set(), [o.grad_fn for o in outputs.values()], collections.Counter()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names[type(node).__name__] += 1
        stack.extend(child for child, _ in node.next_functions)
    return names


def test_task_features_are_split_once_per_stage_for_the_backward_pass() -> None:
    # Indexing a stage's stacked (T, B, C, H, W) features once per task makes T backward nodes
    # that each zero-fill a full (T, ...) gradient; one unbind per stage stacks them instead.
    model = build().train()
    names = _backward_node_names(model(torch.randn(1, 3, 64, 64), mode="tensor"))
    assert names["SelectBackward0"] == 0
