"""Adapter configs, target matching, injection, adapter-only state dicts, trainable policy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlora_vision.adapters.config import (
    LoRAConfig,
    MTLoRAConfig,
    build_adapter_config,
    per_stage,
)
from mtlora_vision.adapters.inject import adapter_layers, inject_adapters, match_targets
from mtlora_vision.adapters.merge import merge_adapters
from mtlora_vision.adapters.mtlora import MTLoRALinear
from mtlora_vision.adapters.state_dict import (
    adapter_parameter_names,
    adapter_state_dict,
    load_adapter_state_dict,
)
from mtlora_vision.models.backbones.swin_trainable import (
    TrainablePolicy,
    parameter_group,
    parameter_groups,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block.proj(block.norm(x)) + block.qkv(x)[..., :4]
        return self.head(x)


def test_per_stage_broadcasts_and_checks() -> None:
    assert per_stage(4, 4, "r") == (4, 4, 4, 4)
    assert per_stage([8], 4, "r") == (8, 8, 8, 8)
    assert per_stage((1, 2, 3, 4), 4, "r") == (1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"shared_rank=\[1, 2\]"):
        per_stage([1, 2], 4, "shared_rank")


def test_mtlora_config_normalises_and_gives_stage_specs() -> None:
    cfg = MTLoRAConfig(shared_rank=[16, 32, 64, 64], task_rank=4, dropout=0.1)
    assert cfg.shared_rank == (16, 32, 64, 64)
    assert cfg.task_rank == (4, 4, 4, 4)
    spec = cfg.stage_spec(1, ("semseg", "sal"))
    assert (spec.shared_rank, spec.task_rank, spec.tasks) == (32, 4, ("semseg", "sal"))
    assert (spec.shared_scale, spec.task_scale, spec.dropout) == (4.0, 4.0, 0.1)
    # 'addition' needs tasks, so shared-only layers use the plain shared update.
    assert MTLoRAConfig(mode="addition").stage_spec(0).mode == "matrix"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shared_rank": 0}, r"shared_rank=\[0, 0, 0, 0\]"),
        ({"task_rank": [4, 4, 0, 4]}, r"task_rank=\[4, 4, 0, 4\]"),
        ({"shared_rank": 2.5}, "shared_rank"),
        ({"dropout": -0.1}, "dropout"),
        ({"mode": "concat"}, "concat"),
        ({"task_modules": ("fc3",)}, "fc3"),
    ],
)
def test_mtlora_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MTLoRAConfig(**kwargs)


def test_build_adapter_config() -> None:
    assert build_adapter_config(None) is None
    cfg = build_adapter_config(
        {"type": "mtlora", "shared_rank": 16, "target_modules": ["qkv", "proj", "fc1", "fc2"]}
    )
    assert isinstance(cfg, MTLoRAConfig)
    assert cfg.shared_rank == (16,) * 4
    assert isinstance(build_adapter_config({"type": LoRAConfig, "rank": 2}), LoRAConfig)
    with pytest.raises(ValueError, match="'dora'"):
        build_adapter_config({"type": "dora"})
    with pytest.raises(TypeError, match="rnak"):
        build_adapter_config({"type": "lora", "rnak": 2})
    with pytest.raises(ValueError, match=r"rank=\[0, 0, 0, 0\]"):
        build_adapter_config({"type": "lora", "rank": 0})


def test_match_targets_suffix_and_regex() -> None:
    names = ["blocks.0.qkv", "blocks.0.proj", "blocks.1.qkv", "head", "myqkv"]
    assert match_targets(names, ["qkv"]) == ["blocks.0.qkv", "blocks.1.qkv"]
    assert match_targets(names, ["head", "proj"]) == ["blocks.0.proj", "head"]
    assert match_targets(names, r"blocks\.1\..*") == ["blocks.1.qkv"]


def test_inject_keeps_outputs_and_marks_adapters() -> None:
    model = Toy()
    x = torch.randn(3, 4)
    expected = model(x)
    specs = {n: LoRAConfig(rank=2).stage_spec(0) for n in ["blocks.0.qkv", "blocks.1.proj"]}
    layers = inject_adapters(model, specs)
    assert set(layers) == set(adapter_layers(model)) == {"blocks.0.qkv", "blocks.1.proj"}
    assert isinstance(model.blocks[0].qkv, MTLoRALinear)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert adapter_parameter_names(model) == [
        "blocks.0.qkv.lora_shared_a",
        "blocks.0.qkv.lora_shared_b",
        "blocks.1.proj.lora_shared_a",
        "blocks.1.proj.lora_shared_b",
    ]
    with pytest.raises(TypeError, match="MTLoRALinear"):
        inject_adapters(model, {"blocks.0.qkv": specs["blocks.0.qkv"]})
    with pytest.raises(KeyError, match=r"blocks\.7\.qkv"):
        inject_adapters(model, {"blocks.7.qkv": specs["blocks.0.qkv"]})


def test_adapter_state_dict_round_trip(tmp_path) -> None:
    original = Toy()
    model = copy.deepcopy(original)
    spec = MTLoRAConfig(shared_rank=2, task_rank=1).stage_spec(0, ("semseg", "sal"))
    inject_adapters(model, {"blocks.0.proj": spec, "blocks.1.proj": spec})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
    state = adapter_state_dict(model)
    assert all(".lora_" in k for k in state)
    assert len(state) == 2 * 6
    torch.save(state, tmp_path / "adapters.pth")

    fresh = copy.deepcopy(original)
    inject_adapters(fresh, {"blocks.0.proj": spec, "blocks.1.proj": spec})
    loaded = load_adapter_state_dict(fresh, torch.load(tmp_path / "adapters.pth"))
    assert loaded == sorted(state)
    x = torch.randn(2, 4)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)

    other = Toy()
    inject_adapters(
        other, {"blocks.0.proj": MTLoRAConfig(shared_rank=2, task_rank=1).stage_spec(0, ("depth",))}
    )
    with pytest.raises(KeyError, match=r"lora_tasks_a\.depth"):
        load_adapter_state_dict(other, state)
    bigger = Toy()
    inject_adapters(
        bigger,
        {
            n: MTLoRAConfig(shared_rank=3, task_rank=1).stage_spec(0, ("semseg", "sal"))
            for n in ["blocks.0.proj", "blocks.1.proj"]
        },
    )
    with pytest.raises(ValueError, match=r"lora_shared_a: \(2, 4\) vs model \(3, 4\)"):
        load_adapter_state_dict(bigger, state)
    merge_adapters(fresh)
    with pytest.raises(ValueError, match="unmerge"):
        load_adapter_state_dict(fresh, state)


def test_parameter_group_rules() -> None:
    patterns = (
        ("patch_embed", "patch_embed."),
        ("rel_pos", "relative_position_bias_table"),
        ("downsample", "downsample.reduction."),
        ("norms", "norm"),
    )
    adapters = {
        "layers.0.blocks.0.attn.qkv.lora_shared_a",
        "layers.1.downsample.reduction.lora_shared_a",
    }
    bases = {"layers.1.downsample.reduction.base_layer.weight"}
    cases = {
        "patch_embed.norm.weight": "patch_embed",
        "layers.0.blocks.0.norm1.weight": "norms",
        "layers.1.downsample.norm.bias": "norms",
        "layers.0.blocks.0.attn.relative_position_bias_table": "rel_pos",
        "layers.2.downsample.reduction.weight": "downsample",
        "layers.1.downsample.reduction.base_layer.weight": "backbone",
        "layers.1.downsample.reduction.lora_shared_a": "adapters",
        "layers.0.blocks.0.attn.qkv.lora_shared_a": "adapters",
        "layers.0.blocks.0.mlp.fc1.weight": "backbone",
    }
    for name, group in cases.items():
        assert parameter_group(name, patterns, adapters, bases) == group, name
    assert parameter_groups(cases, patterns, adapters, bases) == cases


def test_trainable_policy_switches() -> None:
    policy = TrainablePolicy.from_mapping({"norms": False, "backbone": True})
    assert not policy.is_trainable("norms")
    assert policy.is_trainable("backbone")
    assert policy.is_trainable("adapters")
    assert policy.is_trainable("decoder")
    with pytest.raises(KeyError, match="nroms"):
        TrainablePolicy.from_mapping({"nroms": False})
    with pytest.raises(ValueError, match="'yes'"):
        TrainablePolicy(norms="yes")


def test_injection_dispatches_on_the_spec_type() -> None:
    from mtlora_vision.adapters.inject import build_adapter_layer
    from mtlora_vision.adapters.mtl_lora import MTLLoRALinear, MTLLoRASpec
    from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig

    layer = build_adapter_layer(nn.Linear(8, 8), MTLLoRASpec(MTLLoRAConfig(rank=2), ("a", "b")))
    assert isinstance(layer, MTLLoRALinear)
    assert layer.tasks == ("a", "b")
    with pytest.raises(TypeError, match="No adapter layer for a dict"):
        build_adapter_layer(nn.Linear(8, 8), {"rank": 2})
