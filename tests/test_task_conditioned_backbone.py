"""Swin with task-conditioned adapters (MTL-LoRA, TA-LoRA-style prompts) and a branch stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from tool_loader import load_tool
from torch import nn

from mtlora_vision.adapters.config import build_adapter_config
from mtlora_vision.adapters.mtl_lora import MTLLoRALinear
from mtlora_vision.adapters.mtl_lora_merge import (
    merge_task,
    set_merge_at_inference,
    task_merged_state_dict,
    unmerge_task,
)
from mtlora_vision.adapters.mtlora import MTLoRALinear
from mtlora_vision.adapters.prompt_attention import prompt_window_attention
from mtlora_vision.adapters.state_dict import adapter_state_dict, load_adapter_state_dict
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig, TALoRAPromptConfig
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.backbones.swin_blocks import (
    relative_position_index,
    to_windows,
    window_attention,
    window_geometry_of,
)
from mtlora_vision.models.backbones.swin_trainable import TrainablePolicy
from mtlora_vision.models.backbones.task_conditioned import WindowPrompt, replicate_task_major

ARCH = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 2))
TASKS = ("semseg", "human_parts", "sal")
ONLY_ADAPTERS = TrainablePolicy(patch_embed=False, norms=False, rel_pos=False, downsample=False)


def build(adapter, tasks=TASKS, fused_attn=None) -> SwinBackbone:
    torch.manual_seed(0)  # same base weights for every backbone (adapters are drawn after)
    return SwinBackbone(
        ARCH, img_size=64, window_size=4, tasks=tasks, adapter=adapter, fused_attn=fused_attn
    ).eval()


def mtl_lora(branch_stage: int) -> MTLLoRAConfig:
    return MTLLoRAConfig(rank=4, alpha=8.0, num_up=2, dropout=0.0, branch_stage=branch_stage)


def prompts(branch_stage: int) -> TALoRAPromptConfig:
    return TALoRAPromptConfig(num_tokens=3, rank=2, branch_stage=branch_stage)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Relative error in the Frobenius norm (mixing B^i by softmax weights rounds ~1e-7)."""
    assert actual.shape == expected.shape
    rel = float((actual - expected).norm() / expected.norm())
    assert rel <= tol, rel


@torch.no_grad()
def perturb_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter parameter random values (zero-init B and gates would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (MTLLoRALinear, MTLoRALinear, WindowPrompt)):
            for name, param in module.named_parameters():
                if not name.startswith("base_layer."):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_build_adapter_config_accepts_the_new_types() -> None:
    cfg = build_adapter_config(dict(type="mtl_lora", rank=8, branch_stage=2))
    assert cfg == MTLLoRAConfig(rank=8, branch_stage=2)
    assert cfg.scale == 256.0 / 8
    assert build_adapter_config(dict(type="ta_lora_prompt")) == TALoRAPromptConfig()
    assert TALoRAPromptConfig().branch_stage == 2
    assert MTLLoRAConfig().branch_stage == 0
    with pytest.raises(ValueError, match="branch_stage"):
        MTLLoRAConfig(branch_stage=4)
    with pytest.raises(ValueError, match="temperature"):
        MTLLoRAConfig(temperature=0.0)
    with pytest.raises(ValueError, match="compose"):
        TALoRAPromptConfig(compose="mul")


def test_replicate_task_major() -> None:
    x = torch.arange(6.0).view(2, 3)
    out = replicate_task_major(x, 3)
    assert out.shape == (6, 3)
    for t in range(3):
        torch.testing.assert_close(out[2 * t : 2 * t + 2], x, rtol=0, atol=0)


@pytest.mark.parametrize("branch_stage", [0, 2])
def test_mtl_lora_layers_follow_the_branch_stage(branch_stage: int) -> None:
    model = build(mtl_lora(branch_stage))
    for i, stage in enumerate(model.layers):
        for block in stage.blocks:
            for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                expected = MTLLoRALinear if i >= branch_stage else MTLoRALinear
                assert type(layer) is expected
                if i < branch_stage:
                    assert layer.num_tasks == 0
                    assert layer.shared_scale == 8.0 / 4  # alpha / rank
    groups = model.parameter_groups()
    assert groups["layers.3.blocks.0.attn.qkv.lora_lambdas"] == "adapters"
    assert groups["layers.3.blocks.0.attn.qkv.base_layer.weight"] == "backbone"


@pytest.mark.parametrize(
    "adapter",
    [mtl_lora(0), mtl_lora(2), prompts(0), prompts(2)],
    ids=["mtl0", "mtl2", "ta0", "ta2"],
)
@pytest.mark.parametrize("fused", [True, False])
def test_identity_at_initialisation(adapter, fused: bool, images: torch.Tensor) -> None:
    frozen = build(None, fused_attn=fused)
    adapted = build(adapter, fused_attn=fused)
    with torch.no_grad():
        reference = frozen(images)
        feats = adapted(images)
    for ref, feat in zip(reference, feats, strict=True):
        assert feat.shape == (len(TASKS), *ref.shape[1:])
        for t in range(len(TASKS)):
            torch.testing.assert_close(feat[t], ref[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("adapter", [mtl_lora(2), prompts(2)], ids=["mtl", "ta"])
def test_gradients_only_in_adapters_of_branched_stages(adapter, images: torch.Tensor) -> None:
    model = build(adapter)
    groups = model.apply_trainable(ONLY_ADAPTERS)
    perturb_adapters(model)
    model.train()
    sum(f.square().mean() for f in model(images)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    adapter_names = {n for n, g in groups.items() if g == "adapters"}
    assert with_grad == adapter_names
    if isinstance(adapter, TALoRAPromptConfig):
        assert all(".attn.prompt.prompt_" in n for n in adapter_names)
        assert not any(n.startswith(("layers.0.", "layers.1.")) for n in adapter_names)
    nonzero = {n for n in with_grad if model.get_parameter(n).grad.abs().sum() > 0}
    fast = {n for n in adapter_names if "lora_lambdas" in n or "prompt_fast" in n}
    assert fast
    assert fast <= nonzero, "task-specific parameters learn"


@pytest.mark.parametrize("adapter", [mtl_lora(2), prompts(2)], ids=["mtl", "ta"])
def test_tasks_differ_only_after_the_branch(adapter, images: torch.Tensor) -> None:
    model = build(adapter)
    perturb_adapters(model)
    with torch.no_grad():
        feats = model(images)
    for stage, feat in enumerate(feats):
        # stage 1's feature is taken after stage 2's shared patch merging, before its blocks
        if stage < 2:
            torch.testing.assert_close(feat[1], feat[0], rtol=0, atol=0)
        else:
            assert (feat[1] - feat[0]).abs().max() > 1e-3


def copy_branched_into_stage0_model(late: SwinBackbone, early: SwinBackbone) -> None:
    """Give ``early`` (branch 0) the weights of ``late``: its pre-branch task parts are equal."""
    late_state = late.state_dict()
    with torch.no_grad():
        for name, param in early.named_parameters():
            if name in late_state:
                param.copy_(late_state[name])
                continue
            module_name, _, leaf = name.rpartition(".")
            if leaf.startswith("prompt_gate_"):
                param.zero_()  # prompts before the branch of `late` do not exist: gates off
                continue
            if ".prompt." in name:
                continue  # other prompt tensors stay random behind a zero gate
            layer = early.get_submodule(module_name)
            src = late.get_submodule(module_name)
            assert isinstance(src, MTLoRALinear)  # shared LoRA: A, every B^i = B, Lambda_t = I
            if leaf == "lora_a":
                param.copy_(src.lora_shared_a)
            elif leaf == "lora_b":
                param.copy_(src.lora_shared_b.expand_as(param))
            elif leaf == "lora_lambdas":
                param.copy_(torch.eye(layer.rank).expand_as(param))
            # lora_mix_logits stay random: the mixing weights sum to 1


@pytest.mark.parametrize("kind", ["mtl", "ta"])
def test_branch_point_equivalence(kind: str, images: torch.Tensor) -> None:
    make = mtl_lora if kind == "mtl" else prompts
    late = build(make(2))
    perturb_adapters(late)
    early = build(make(0))
    perturb_adapters(early, seed=2)
    copy_branched_into_stage0_model(late, early)
    with torch.no_grad():
        batched = late(images)
        separate = [early(images, tasks=(task,)) for task in TASKS]
        early_batched = early(images)
    for stage, feat in enumerate(batched):
        for t in range(len(TASKS)):
            assert_rel_close(separate[t][stage][0], feat[t])
            assert_rel_close(early_batched[stage][t], separate[t][stage][0])
    # a subset in another order gives those tasks' rows
    with torch.no_grad():
        subset = late(images, tasks=("sal", "semseg"))
    assert_rel_close(subset[3][0], batched[3][2])
    assert_rel_close(subset[3][1], batched[3][0])


def test_merged_inference_equals_unmerged(images: torch.Tensor) -> None:
    model = build(mtl_lora(1))
    perturb_adapters(model)
    with torch.no_grad():
        unmerged = model(images)
        assert set_merge_at_inference(model, True) == 4 * 4  # 4 blocks in stages 1-3
        merged = model(images)
    for ref, out in zip(unmerged, merged, strict=True):
        assert_rel_close(out, ref)
    # the merged path really runs W + Delta W_t (not the low-rank path): compare one layer
    layer = model.layers[3].blocks[0].mlp.fc1
    x = torch.randn(len(TASKS) * 2, 5, layer.in_features)
    with torch.no_grad():
        out = layer(x, tasks=TASKS)
    for t, task in enumerate(TASKS):
        expected = x[2 * t : 2 * t + 2] @ layer.merged_weight(task).T + layer.base_layer.bias
        torch.testing.assert_close(out[2 * t : 2 * t + 2], expected, rtol=1e-5, atol=1e-5)


def test_per_task_merged_export_equals_the_adapted_backbone(images: torch.Tensor) -> None:
    model = build(mtl_lora(1))  # stage 0: shared LoRA, stages 1-3: MTL-LoRA
    perturb_adapters(model)
    plain = build(None)
    with torch.no_grad():
        features = {task: model(images, tasks=(task,)) for task in TASKS}
        plain.load_state_dict(task_merged_state_dict(model, "sal"), strict=True)
        exported = plain(images)
    for ref, out in zip(features["sal"], exported, strict=True):
        assert_rel_close(out[0], ref[0])
    assert (exported[3][0] - features["semseg"][3][0]).abs().max() > 1e-3

    assert merge_task(model, "human_parts") == 4 * 4  # 4 blocks in stages 1-3
    with torch.no_grad():
        merged = model(images, tasks=("human_parts",))
    for ref, out in zip(features["human_parts"], merged, strict=True):
        assert_rel_close(out, ref)
    with pytest.raises(RuntimeError, match="unmerge"):
        model(images)  # all tasks stacked: not while one task is merged in place
    assert unmerge_task(model) == 4 * 4
    with pytest.raises(ValueError, match="prompt adapter"):
        task_merged_state_dict(build(prompts(2)), "sal")


@pytest.mark.parametrize("adapter", [mtl_lora(2), prompts(2)], ids=["mtl", "ta"])
def test_adapter_state_dict_round_trip(adapter, images: torch.Tensor) -> None:
    model = build(adapter)
    perturb_adapters(model)
    state = adapter_state_dict(model)
    base_keys = {k for k in model.state_dict() if k not in state}
    assert not any(".lora_" in k or ".prompt." in k for k in base_keys)
    if isinstance(adapter, MTLLoRAConfig):
        assert any(k.endswith(".lora_lambdas") for k in state)
        assert any(k.endswith(".lora_shared_a") for k in state)  # shared LoRA before the branch
    else:
        assert all(".attn.prompt.prompt_" in k for k in state)
    fresh = build(adapter)  # same base weights (seeded), adapters at their initialisation
    with torch.no_grad():
        reference = model(images)
        assert (fresh(images)[3] - reference[3]).abs().max() > 1e-3
        assert sorted(load_adapter_state_dict(fresh, state)) == sorted(state)
        for out, ref in zip(fresh(images), reference, strict=True):
            assert torch.equal(out, ref)


def test_tasks_argument_needs_a_task_conditioned_adapter(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="task-conditioned"):
        build(None)(images, tasks=("semseg",))
    with pytest.raises(ValueError, match="distinct tasks"):
        build(prompts(2))(images, tasks=("depth",))


def swin_t_mtl_lora_adapter_count(rank: int, num_up: int, num_tasks: int) -> int:
    """Formula: per block, qkv/proj/fc1/fc2 have sum(in + n * out) = 25 C; per layer T r^2 + T n."""
    dims, depths = (96, 192, 384, 768), (2, 2, 6, 2)
    total = 0
    for dim, depth in zip(dims, depths, strict=True):
        total += depth * (rank * 25 * dim + 4 * (num_tasks * rank * rank + num_tasks * num_up))
    return total


def test_method_configs_build_and_count() -> None:
    root = Path(__file__).resolve().parents[1]
    analyze = load_tool("analyze_model")
    mtl = root / "configs" / "methods" / "mtl-lora_swin-t_pascal.py"
    counts = analyze.count_parameters(analyze.build_model(str(mtl)))
    assert counts["policy_groups"]["adapters"] == swin_t_mtl_lora_adapter_count(40, 2, 5)
    # Task part: per adapted layer (4 per block, 12 blocks) T r^2 transforms + T n mixing logits.
    assert counts["breakdown"]["task_adapters"] == 48 * (5 * 40 * 40 + 5 * 2)
    ta = Config.fromfile(str(root / "configs" / "methods" / "ta-lora_swin-t_pascal.py"))
    assert ta.optim_wrapper.paramwise_cfg.custom_keys == {"prompt_fast": {"lr_mult": 10.0}}
    ta.model.backbone.update(arch=ARCH, img_size=64, window_size=4, pretrained=None)
    ta.model.fusion.channels = (4, 4, 8, 8)
    model = MODELS.build(ta.model)
    assert isinstance(model.backbone.adapter_config, TALoRAPromptConfig)
    prompts_ = {n for n, p in model.named_parameters() if ".attn.prompt." in n}
    assert prompts_
    assert all(model.get_parameter(n).requires_grad for n in prompts_)
    assert {n.split(".")[2] for n in prompts_} == {"2", "3"}  # branch_stage 2
    fast = sum(model.get_parameter(n).numel() for n in prompts_ if ".prompt_fast_" in n)
    ta_counts = analyze.count_parameters(model)
    assert ta_counts["breakdown"]["task_adapters"] == fast > 0
    adapters = ta_counts["policy_groups"]["adapters"]
    assert ta_counts["breakdown"]["shared_adapters"] == adapters - fast


@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "fused"])
def test_joint_shared_prompt_matches_the_prompt_module(fused: bool) -> None:
    # The backbone's window attention (P0 appended to the keys) against the prompt module's own
    # attention maths (prompt_window_attention), on a shifted block with padding-free windows.
    cfg = TALoRAPromptConfig(num_tokens=3, rank=2, branch_stage=2, shared_mode="joint")
    backbone = SwinBackbone(ARCH, img_size=128, window_size=4, tasks=TASKS, adapter=cfg).eval()
    perturb_adapters(backbone)
    block = backbone.layers[2].blocks[1]
    assert any(block.shift_size)
    attn, prompt = block.attn, block.attn.prompt
    prompt.set_active_tasks(TASKS)
    x = torch.randn(len(TASKS) * 2, 8, 8, 64)  # task-major stacked streams, stage-3 grid
    geom = window_geometry_of(block, x)
    windows = to_windows(block.norm1(x), geom)
    with torch.no_grad():
        ours = window_attention(attn, windows, geom, fused)
        B_, N, C = windows.shape
        q, k, v = attn.qkv(windows).reshape(B_, N, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)
        index = relative_position_index(geom.window, attn.window_size, windows.device)
        bias = attn.relative_position_bias_table[index].view(N, N, 2).permute(2, 0, 1)
        linear = attn.qkv
        kv = prompt.prompt_kv(linear.weight, linear.bias, TASKS)
        expected = prompt_window_attention(
            q,
            k,
            v,
            task_k=kv.task_k,
            task_v=kv.task_v,
            task_gate=prompt.prompt_gate_task,
            shared_k=kv.shared_k,
            shared_v=kv.shared_v,
            rel_pos_bias=bias,
            mask=geom.mask,
            scale=attn.scale,
        )
    assert_rel_close(ours, expected.transpose(1, 2).reshape(B_, N, C))


def test_joint_mode_changes_outputs_at_step_zero_and_trains_the_shared_prompt(images) -> None:
    gated = build(prompts(2))
    joint = build(TALoRAPromptConfig(num_tokens=3, rank=2, branch_stage=2, shared_mode="joint"))
    plain = build(None, tasks=TASKS)
    with torch.no_grad():
        base = plain(images)[-1][0]
        # Zero gates: the frozen model, up to the rounding of attention batched over the tasks.
        assert_rel_close(gated(images)[-1][0], base, tol=1e-6)
        assert not torch.allclose(joint(images)[-1][0], base)  # a prefix changes the softmax
    joint.train()
    sum(f.square().mean() for f in joint(images)).backward()
    shared = joint.layers[2].blocks[0].attn.prompt.prompt_slow_shared
    assert shared.grad is not None
    assert shared.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shared_mode"):
        TALoRAPromptConfig(shared_mode="sum")
