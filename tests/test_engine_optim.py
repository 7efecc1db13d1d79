"""Official AdamW parameter groups and the mmengine constructor."""

from __future__ import annotations

import pytest
import torch
from mmengine.optim import OptimWrapper, build_optim_wrapper
from torch import nn

from mtlora_vision.engine.optim import (
    OfficialOptimWrapperConstructor,
    official_param_groups,
    uses_weight_decay,
)


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.ones(2, 2))  # 2-D but named *.bias: no decay
        self.scale = nn.Parameter(torch.tensor(1.0))  # 0-d: no decay


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = nn.LayerNorm(4)
        self.lora_fast_a = nn.Linear(4, 2, bias=False)
        self.lora_fast_ab = nn.Linear(2, 4)
        self.odd = _Odd()


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_decay_rule():
    assert uses_weight_decay("layers.0.attn.qkv.weight", 2)
    assert uses_weight_decay("head.conv.weight", 4)
    assert not uses_weight_decay("odd.bias", 2)
    assert not uses_weight_decay("norm.weight", 1)
    assert not uses_weight_decay("scale", 0)


def test_official_groups_hold_only_trainable_params():
    model = _Tiny()
    groups = official_param_groups(model, lr=1e-3, weight_decay=0.05)
    by_name = {g["group_name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay"}
    assert _names(model, by_name["decay"]) == [
        "conv.weight",
        "lora_fast_a.weight",
        "lora_fast_ab.weight",
    ]
    assert _names(model, by_name["no_decay"]) == [
        "conv.bias",
        "lora_fast_ab.bias",
        "norm.bias",
        "norm.weight",
        "odd.bias",
        "odd.scale",
    ]
    assert (by_name["decay"]["weight_decay"], by_name["no_decay"]["weight_decay"]) == (0.05, 0.0)
    assert all(g["lr"] == 1e-3 for g in groups)


def test_custom_keys_make_named_groups_longest_key_wins():
    model = _Tiny()
    custom = {"lora_fast": {"lr_mult": 10.0}, "lora_fast_ab": {"lr_mult": 0.5, "decay_mult": 2.0}}
    groups = {g["group_name"]: g for g in official_param_groups(model, 1e-3, 0.05, custom)}
    assert _names(model, groups["lora_fast.decay"]) == ["lora_fast_a.weight"]
    assert groups["lora_fast.decay"]["lr"] == pytest.approx(1e-2)
    assert _names(model, groups["lora_fast_ab.decay"]) == ["lora_fast_ab.weight"]
    assert groups["lora_fast_ab.decay"]["lr"] == pytest.approx(5e-4)
    assert groups["lora_fast_ab.decay"]["weight_decay"] == pytest.approx(0.1)
    assert groups["lora_fast_ab.no_decay"]["weight_decay"] == 0.0
    assert _names(model, groups["decay"]) == ["conv.weight"]
    with pytest.raises(ValueError, match="unknown field"):
        official_param_groups(model, 1e-3, 0.05, {"conv": {"lr": 1.0}})


def test_constructor_through_mmengine_and_one_adamw_step():
    model = _Tiny()
    cfg = dict(
        constructor=OfficialOptimWrapperConstructor,
        type=OptimWrapper,
        optimizer=dict(type=torch.optim.AdamW, lr=0.1, weight_decay=0.05),
    )
    wrapper = build_optim_wrapper(model, cfg)
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)
    assert [g["group_name"] for g in wrapper.optimizer.param_groups] == ["decay", "no_decay"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # zero gradient: only the decoupled decay moves weights
    wrapper.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["conv.weight"], before["conv.weight"] * (1 - 0.1 * 0.05))
    torch.testing.assert_close(after["norm.weight"], before["norm.weight"])
    torch.testing.assert_close(after["odd.bias"], before["odd.bias"])
    torch.testing.assert_close(after["frozen.weight"], before["frozen.weight"])


def test_constructor_errors():
    model = _Tiny()
    base = dict(constructor=OfficialOptimWrapperConstructor)
    with pytest.raises(ValueError, match="only custom_keys"):
        build_optim_wrapper(
            model,
            dict(
                base,
                optimizer=dict(type=torch.optim.AdamW, lr=0.1, weight_decay=0.05),
                paramwise_cfg=dict(norm_decay_mult=0.0),
            ),
        )
    with pytest.raises(ValueError, match="weight_decay"):
        build_optim_wrapper(model, dict(base, optimizer=dict(type=torch.optim.AdamW, lr=0.1)))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optim_wrapper(
            frozen, dict(base, optimizer=dict(type=torch.optim.AdamW, lr=0.1, weight_decay=0.05))
        )
