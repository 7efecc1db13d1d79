"""Lean activations: element-wise outputs recomputed in backward, exactly the plain gradients."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from live_tensors import LiveTensors
from torch import nn

from mtlora_vision.adapters import lowrank_ops, mtlora
from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.adapters.gap_dropout import GapDropout
from mtlora_vision.adapters.mtl_lora import MTLLoRALinear
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig
from mtlora_vision.models.backbones import swin
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.heads import hrnet
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.heads.mlp import MLPHead
from mtlora_vision.models.multitask import MultiTaskModel
from mtlora_vision.recompute import (
    CHECKPOINTING_LEAN_PARTS,
    DEFAULT_LEAN_PARTS,
    LEAN_PARTS,
    _Registry,
    lean_activations,
    lean_dropout,
    lean_parts,
    recomputable,
)

ARCH = {"embed_dim": 16, "depths": (2, 1, 2, 1), "num_heads": (1, 2, 2, 2)}
TASKS = ("semseg", "human_parts", "sal", "normals")
# dropout and DropPath on: the lean path must draw the same masks as nn.Dropout
ADAPTERS = {
    "mtlora": {"type": MTLoRAConfig, "shared_rank": 3, "task_rank": 2, "dropout": 0.3},
    "mtl_lora": {"type": MTLLoRAConfig, "rank": 2, "num_up": 2, "dropout": 0.3, "branch_stage": 2},
}


def build(adapter: str, recompute: bool | str, checkpointing: bool = False) -> MultiTaskModel:
    torch.manual_seed(0)
    model = MultiTaskModel(
        tasks=TASKS,
        backbone={
            "type": SwinBackbone,
            "arch": ARCH,
            "img_size": 64,
            "window_size": 4,
            "drop_path_rate": 0.3,
            "recompute_elementwise": recompute,
            "grad_checkpointing": checkpointing,
        },
        adapter=ADAPTERS[adapter],
        fusion={"channels": (4, 4, 8, 8)},
        heads={"default": {"type": HRNetHead}, "sal": {"type": MLPHead, "channels": 8}},
    ).double()
    with torch.no_grad():  # non-zero B factors, so every adapter term reaches the gradients
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.1)
    return model.train()


def step(model: MultiTaskModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, gradients of a fixed random projection of them, and the BN running statistics."""
    torch.manual_seed(1)  # same DropPath and dropout draws for every model
    images = images.clone().requires_grad_(True)
    outputs = model(images, mode="tensor")
    gen = torch.Generator().manual_seed(2)
    loss = sum(
        (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs.values()
    )
    loss.backward()
    grads = {f"grad:{n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    outs = {f"out:{t}": o.detach() for t, o in outputs.items()}
    stats = {f"buffer:{n}": b for n, b in model.named_buffers() if "running" in n}
    return {**outs, **grads, **stats, "grad:input": images.grad}


@pytest.mark.parametrize("parts", [True, "all"])  # "all": the heads' BatchNorm + ReLU too
@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lean_step_equals_the_plain_one_in_float64(adapter, checkpointing, parts):
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    models = {"plain": build(adapter, False), "lean": build(adapter, parts, checkpointing)}
    calls = {name: [] for name in models}
    for name, model in models.items():
        norm = model.backbone.layers[2].blocks[0].norm2  # a block without task branch
        norm.register_forward_hook(lambda *_, name=name: calls[name].append(1))
    plain, lean = (step(model, images) for model in models.values())
    # lean: forward, the checkpoint's recomputation, then its recipe in backward (the adapter's
    # dropout, recomputed from the LayerNorm's output, asks for that output again)
    lean_calls = 2 + int(checkpointing)
    assert (len(calls["plain"]), len(calls["lean"])) == (1, lean_calls)
    assert plain.keys() == lean.keys()
    assert sum(k.startswith("grad:") for k in plain) > 20
    for name, value in plain.items():
        torch.testing.assert_close(lean[name], value, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_bf16_autocast_outputs_and_gradients_unchanged(checkpointing):
    images = torch.randn(2, 3, 64, 64)
    results = []
    for recompute in (False, "all"):
        model = build("mtlora", recompute, checkpointing and bool(recompute)).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(step(model, images))
    plain, lean = results
    assert plain["out:semseg"].dtype == torch.bfloat16
    for name, value in plain.items():
        torch.testing.assert_close(lean[name], value, rtol=0, atol=0, msg=name)


def counted_gelu() -> tuple[Callable[[torch.Tensor], torch.Tensor], list[int]]:
    """``F.gelu`` that appends to the returned list at each call."""
    calls: list[int] = []

    def gelu(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return F.gelu(x)

    return gelu, calls


def test_recorded_output_is_not_stored_and_recomputed_once_per_use():
    gelu, calls = counted_gelu()
    u = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    with lean_activations():
        h = recomputable(gelu, u)
        out = (h @ w).sum() + (h * 2.0).sum()
    ref = weakref.ref(h)
    del h
    gc.collect()
    assert ref() is None  # nothing kept the GELU output: mm saved a recipe
    out.backward()
    assert len(calls) == 2  # forward, once in backward
    u2 = u.detach().clone().requires_grad_(True)
    w2 = w.detach().clone().requires_grad_(True)
    h2 = F.gelu(u2)
    ((h2 @ w2).sum() + (h2 * 2.0).sum()).backward()
    assert torch.equal(u.grad, u2.grad)
    assert torch.equal(w.grad, w2.grad)


def test_only_the_selected_parts_are_recomputed():
    def gelu_calls(parts, part):
        gelu, calls = counted_gelu()
        u = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        with lean_activations(parts):
            out = (recomputable(gelu, u, part=part) @ w).sum()
        out.backward()
        torch.testing.assert_close(w.grad, F.gelu(u.detach()).sum(0)[:, None].expand(4, 3))
        return len(calls)

    assert gelu_calls(["norm", "gelu"], "gelu") == 2  # forward, and recomputed for mm's backward
    assert gelu_calls(["norm"], "gelu") == 1  # not selected: stored
    assert gelu_calls(["norm"], None) == 2  # no part: whenever lean activations are on
    assert gelu_calls(False, None) == 1


def test_recompute_settings_name_their_parts():
    assert lean_parts(True) == frozenset(DEFAULT_LEAN_PARTS) == {"norm", "gelu", "dropout"}
    assert lean_parts(False) == frozenset()
    assert lean_parts("all") == frozenset(LEAN_PARTS)
    assert lean_parts(["gelu", "heads"]) == {"gelu", "heads"}
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['layernorm'\].*'norm'"):
        lean_parts(["gelu", "layernorm"])
    with pytest.raises(ValueError, match="'bogus'"):
        SwinBackbone(ARCH, img_size=64, window_size=4, recompute_elementwise=["bogus"])
    backbone = SwinBackbone(ARCH, img_size=64, window_size=4, recompute_elementwise=True)
    assert backbone.recompute_elementwise == {"norm", "gelu", "dropout"}
    # True means the heads too while any stage checkpoints (memory first); a list is as given.
    assert lean_parts(True, checkpointing=True) == frozenset(CHECKPOINTING_LEAN_PARTS)
    assert set(CHECKPOINTING_LEAN_PARTS) == {"norm", "gelu", "dropout", "heads"}
    backbone.set_grad_checkpointing([False, True, False, False])
    assert backbone.recompute_elementwise == {"norm", "gelu", "dropout", "heads"}
    backbone.recompute_elementwise = ["gelu"]
    assert backbone.recompute_elementwise == {"gelu"}
    with pytest.raises(ValueError, match="'bogus'"):  # when set, not at the first step
        backbone.recompute_elementwise = ["gelu", "bogus"]
    backbone.set_grad_checkpointing(False)
    backbone.recompute_elementwise = True
    assert backbone.recompute_elementwise == {"norm", "gelu", "dropout"}


@pytest.mark.parametrize(
    ("parts", "checkpointing", "recomputed"),
    [(True, False, False), (["heads"], False, True), (True, True, True), (["norm"], True, False)],
)
def test_heads_batchnorm_relu_is_recomputed_only_when_asked(
    monkeypatch, parts, checkpointing, recomputed
):
    # Asked: by name, or by True (the default) in a model that checkpoints activations.
    calls = []
    again = hrnet.bn_relu_again

    def counted(*args):
        calls.append(1)
        return again(*args)

    monkeypatch.setattr(hrnet, "bn_relu_again", counted)
    model = build("mtlora", parts, checkpointing)
    step(model, torch.randn(2, 3, 64, 64, dtype=torch.float64))
    assert len(calls) == (4 if recomputed else 0)  # each head (HRNet x3, MLP) once in backward


def test_output_modified_in_place_is_stored_as_it_is():
    u = torch.randn(6, dtype=torch.float64, requires_grad=True)
    with lean_activations():
        h = recomputable(torch.mul, u, 2.0)
        h.mul_(3.0)  # after recording: its recipe would give the old values
        out = (h * h).sum()
    out.backward()
    torch.testing.assert_close(u.grad, 72.0 * u.detach(), rtol=1e-12, atol=0)


def test_in_place_change_after_saving_is_still_an_error():
    u = torch.randn(6, dtype=torch.float64, requires_grad=True)
    with lean_activations():
        h = torch.exp(u)  # saves its output
        h.mul_(3.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_lean_dropout_draws_the_masks_of_nn_dropout_and_saves_bool():
    x = torch.randn(64, 32, requires_grad=True)
    dropout = nn.Dropout(0.3).train()
    torch.manual_seed(5)
    expected = dropout(x)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    torch.manual_seed(5)
    with lean_activations(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got = lean_dropout(dropout, x)
    assert torch.equal(got, expected)
    assert [t.dtype for t in saved] == [torch.bool]
    got.sum().backward()
    assert torch.equal(x.grad, (expected != 0).float() / 0.7 * (x != 0))
    assert torch.equal(lean_dropout(dropout.eval(), x), x)  # eval: identity


def test_mtl_lora_layer_recomputes_its_dropout_output(monkeypatch):
    calls = []
    apply_drops = GapDropout.apply_drops

    def counted(x, dropped, scale):
        calls.append(1)
        return apply_drops(x, dropped, scale)

    monkeypatch.setattr(GapDropout, "apply_drops", staticmethod(counted))
    grads = []
    for parts in ((), ("dropout",)):
        torch.manual_seed(0)
        layer = MTLLoRALinear(nn.Linear(8, 6), ("a", "b"), rank=2, dropout=0.3).double().train()
        with torch.no_grad():
            layer.lora_b.normal_()
        x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
        calls.clear()
        with lean_activations(parts):
            out = layer(x, ["a", "b"])
        out.square().sum().backward()
        grads.append((layer.lora_a.grad, x.grad))
        assert len(calls) == (2 if parts else 1), parts  # lean: drawn once, applied again
    for plain, lean in zip(*grads, strict=True):
        assert torch.equal(plain, lean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_project_down_equals_gelu_then_project_down_bit_for_bit(dtype) -> None:
    # The same products and GELU as the plain path, so equal to the last bit in every dtype.
    u = torch.randn(3, 37, 16, dtype=dtype, requires_grad=True)
    w = torch.randn(3, 4, 16, dtype=dtype, requires_grad=True)
    fused = lowrank_ops.gelu_project_down(u, w)
    plain = lowrank_ops.project_down(F.gelu(u), w)
    assert torch.equal(fused, plain)
    grad = torch.randn_like(fused)
    for got, expected in zip(
        torch.autograd.grad(fused, (u, w), grad),
        torch.autograd.grad(plain, (u, w), grad),
        strict=True,
    ):
        assert torch.equal(got, expected)


def test_gelu_project_down_keeps_only_its_input_for_backward() -> None:
    u = torch.randn(3, 37, 16, requires_grad=True)
    w = torch.randn(3, 4, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lowrank_ops.gelu_project_down(u, w)
    assert sorted(t.numel() for t in saved) == [w.numel(), u.numel()]


@pytest.mark.parametrize("mode", ["matrix", "addition"])
def test_lean_task_branch_never_stores_the_task_hidden_tensors(monkeypatch, mode):
    # The last block of each stage feeds fc1's task outputs, in low-rank form, through the GELU
    # into fc2's task down-projections: no (T, M, 4C) tensor is saved for backward. The addition
    # mode needs fc1's task outputs expanded (its shared output normalises their sum).
    saved: list[tuple[int, ...]] = []
    pack = _Registry.pack
    monkeypatch.setattr(
        _Registry, "pack", lambda self, t: saved.append(tuple(t.shape)) or pack(self, t)
    )
    model = MultiTaskModel(
        tasks=TASKS,
        backbone={"type": SwinBackbone, "arch": ARCH, "img_size": 64, "window_size": 4},
        adapter={"type": MTLoRAConfig, "shared_rank": 3, "task_rank": 2, "mode": mode},
        fusion={"channels": 4},
    ).train()
    model(torch.randn(2, 3, 64, 64), mode="tensor")
    T = len(TASKS)
    hidden = [  # the task hidden tensors of each stage's last block, (T, B*H*W, 4C)
        (T, 2 * side * side, 4 * channels)
        for side, channels in zip((16, 8, 4, 2), (16, 32, 64, 128), strict=True)
    ]
    stored = [shape for shape in hidden if shape in saved]
    assert stored == ([] if mode == "matrix" else hidden)


def test_lean_task_branch_frees_its_intermediates_before_fc2(monkeypatch):
    # A checkpointed stage's backward pass recomputes the task branch, and its live tensors peak
    # where fc2's task down-projections run. By then the branch holds only what is still used
    # there or later: the shared and task residual streams (C channels, 1 + T of them), fc1's
    # shared output (its GELU's stored input), fc1's frozen output (the task inputs' base) and
    # the GELU output (4C each), and thin tensors. Projection outputs, LayerNorm outputs and
    # fc2's dropout output, all already used or not yet needed, are not alive.
    wide = {**ARCH, "embed_dim": 32}  # channels well above the ranks: thin tensors stay thin
    tracker = LiveTensors()
    held: list[int] = []
    branch, op = swin.task_branch_after_attention, mtlora.expand_gelu_project_down

    def tracked_branch(*args):
        start = tracker.live
        record = lambda *a: held.append(tracker.live - start) or op(*a)  # noqa: E731
        monkeypatch.setattr(mtlora, "expand_gelu_project_down", record)
        return branch(*args)

    monkeypatch.setattr(swin, "task_branch_after_attention", tracked_branch)
    model = MultiTaskModel(
        tasks=TASKS,
        backbone={"type": SwinBackbone, "arch": wide, "img_size": 64, "window_size": 4},
        adapter=ADAPTERS["mtlora"],
        fusion={"channels": 4},
    ).train()
    with tracker:
        model(torch.randn(2, 3, 64, 64), mode="tensor")
    T = len(TASKS)
    assert len(held) == 4  # one call per stage
    # stages 0 and 1 (16x16 and 8x8 tokens): later ones are too small for per-token bounds
    for stage, (got, M, C) in enumerate(zip(held, (512, 128), (32, 64), strict=False)):
        must = 4 * M * C * ((1 + T) + 3 * 4)  # float32 bytes
        one = 4 * M * 4 * C  # thin tensors (ranks, statistics, dropout indices) take less
        assert must <= got < must + one, stage
