"""Activation checkpointing: blocks recomputed in the backward pass, exactly the plain gradients."""

from __future__ import annotations

import pytest
import torch

from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig
from mtlora_vision.models.backbones.swin import SwinBackbone

ARCH = dict(embed_dim=16, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 2))
TASKS = ("semseg", "sal", "normals")
ADAPTERS = {
    # dropout and DropPath on: the recomputation must draw the same masks
    "mtlora": MTLoRAConfig(shared_rank=3, task_rank=2, dropout=0.3),
    "mtl_lora": MTLLoRAConfig(rank=2, num_up=2, dropout=0.3, branch_stage=2),
}


def build(adapter, checkpointing, lean=True) -> SwinBackbone:
    torch.manual_seed(0)
    backbone = SwinBackbone(
        ARCH,
        img_size=64,
        window_size=4,
        drop_path_rate=0.3,
        tasks=TASKS,
        adapter=adapter,
        grad_checkpointing=checkpointing,
        recompute_elementwise=lean,  # lean: our checkpoint; else torch.utils.checkpoint's
    ).double()
    with torch.no_grad():  # non-zero B factors, so every adapter term reaches the gradients
        for name, param in backbone.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.1)
    return backbone.train()


def gradients(backbone: SwinBackbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random projection of every stage's features, and of the input."""
    torch.manual_seed(1)  # same DropPath and dropout draws for every backbone
    images = images.clone().requires_grad_(True)
    feats = backbone(images)
    gen = torch.Generator().manual_seed(2)
    loss = sum((f * torch.randn(f.shape, generator=gen, dtype=f.dtype)).sum() for f in feats)
    loss.backward()
    grads = {n: p.grad for n, p in backbone.named_parameters() if p.grad is not None}
    return {**grads, "input": images.grad}


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("switch", [True, (False, True, False, True)])
def test_checkpointed_gradients_equal_the_plain_ones_in_float64(adapter, switch, lean):
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    plain = gradients(build(ADAPTERS[adapter], False, lean=False), images)
    checkpointed_model = build(ADAPTERS[adapter], switch, lean)
    calls = []
    block = checkpointed_model.layers[1].blocks[0]
    block.attn.qkv.register_forward_hook(lambda *_: calls.append(1))
    checkpointed = gradients(checkpointed_model, images)
    assert len(calls) == 2  # stage 1 ran its block again in the backward pass
    assert plain.keys() == checkpointed.keys()
    assert len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-12, atol=1e-12, msg=name)


def test_per_stage_switches_and_inference_untouched():
    backbone = build(ADAPTERS["mtlora"], False)
    assert backbone.grad_checkpointing == (False,) * 4
    backbone.set_grad_checkpointing()
    assert backbone.grad_checkpointing == (True,) * 4
    backbone.set_grad_checkpointing([False, False, True, True])
    assert backbone.grad_checkpointing == (False, False, True, True)
    with pytest.raises(ValueError, match=r"grad_checkpointing=\[True, False\] has 2 entries"):
        backbone.set_grad_checkpointing([True, False])
    calls = []
    backbone.layers[3].blocks[0].attn.qkv.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():  # nothing to recompute without autograd: one pass
        backbone(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert len(calls) == 1


@pytest.mark.parametrize("lean", [True, False])
def test_task_branch_is_recomputed_in_two_parts_one_after_the_other(lean):
    # A stage's last block is two checkpoints: the backward pass finishes the part after the
    # attention (e.g. fc1's task LoRA gradients) before it recomputes the attention, so it never
    # holds both parts' saved tensors at once.
    backbone = build(ADAPTERS["mtlora"], True, lean)
    block = backbone.layers[0].blocks[-1]
    events = []
    block.attn.qkv.register_forward_hook(lambda *_: events.append("attention"))
    block.attn.proj.base_layer.register_forward_hook(lambda *_: events.append("rest"))
    for name, param in block.mlp.fc1.named_parameters():
        if param.requires_grad and "lora_tasks" in name:
            param.register_post_accumulate_grad_hook(lambda _: events.append("fc1 gradient"))
    backbone(torch.randn(2, 3, 64, 64, dtype=torch.float64))[0].sum().backward()
    forward, backward = events[:2], events[2:]
    assert forward == ["attention", "rest"]
    first_gradient = backward.index("fc1 gradient")
    assert backward[:first_gradient] == ["rest"]  # recomputed alone
    assert "attention" in backward[first_gradient:]  # recomputed after
