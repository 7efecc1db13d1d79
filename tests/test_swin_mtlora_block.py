"""MTLoRA task branch against an independent re-statement of the official maths
(docs/model.md#task-branch).

The reference below is written from the spec with explicit per-task loops, explicit window
partition, shift masks, relative-position indexing, attention softmax and the official
patch-merging concatenation order; it shares no code with the package's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.backbones.swin_blocks import block_forward_tasks

TASKS = ("semseg", "human_parts", "sal")
ARCH = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)}


def randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name or "relative_position" in name:
                p.normal_(std=0.2)


def make_backbone(drop_path_rate: float = 0.0) -> SwinBackbone:
    adapter = MTLoRAConfig(
        shared_rank=3, task_rank=2, shared_scale=4.0, task_scale=3.0, dropout=0.0
    )
    backbone = SwinBackbone(
        arch=ARCH,
        img_size=64,
        window_size=4,
        drop_path_rate=drop_path_rate,
        tasks=TASKS,
        adapter=adapter,
    )
    randomise(backbone)
    return backbone


# -- reference maths -----------------------------------------------------------------------------


def partition(x: torch.Tensor, w: int) -> torch.Tensor:
    B, H, W, C = x.shape
    return x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)


def reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:  # noqa: N803
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_mask(H: int, W: int, w: int, s: int) -> torch.Tensor:  # noqa: N803
    img = torch.zeros(1, H, W, 1)
    count = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[:, hs, ws, :] = count
            count += 1
    labels = partition(img, w).squeeze(-1)  # nW, N
    return (labels[:, None, :] != labels[:, :, None]).float() * -100.0


def rel_bias(table: torch.Tensor, w: int, table_w: int = 4) -> torch.Tensor:
    """Bias of every token pair of a w x w window from a table built for table_w x table_w."""
    N = w * w
    bias = torch.empty(table.shape[1], N, N)
    for i in range(N):
        for j in range(N):
            dy, dx = i // w - j // w, i % w - j % w
            bias[:, i, j] = table[(dy + table_w - 1) * (2 * table_w - 1) + dx + table_w - 1]
    return bias


def shared_linear(layer, x):
    W, b = layer.base_layer.weight, layer.base_layer.bias
    return x @ W.T + b + layer.shared_scale * (x @ layer.lora_shared_a.T @ layer.lora_shared_b.T)


def task_linear(layer, task, x_shared, x_task):
    W, b = layer.base_layer.weight, layer.base_layer.bias
    low = x_task @ layer.lora_tasks_a[task].T @ layer.lora_tasks_b[task].T
    return x_shared @ W.T + b + layer.task_scale * low


def attention(block, x: torch.Tensor, w: int, s: int) -> torch.Tensor:
    """Shifted-window attention of LN1(x) up to (not including) proj: windows (B*nW, N, C)."""
    B, H, W, C = x.shape
    heads = block.attn.num_heads
    h = F.layer_norm(x, (C,), block.norm1.weight, block.norm1.bias)
    if s:
        h = torch.roll(h, (-s, -s), (1, 2))
    windows = partition(h, w)
    qkv = shared_linear(block.attn.qkv, windows).view(windows.shape[0], w * w, 3, heads, C // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    scores = (q * (C // heads) ** -0.5) @ k.transpose(-1, -2) + rel_bias(
        block.attn.relative_position_bias_table, w
    )
    if s:
        mask = shift_mask(H, W, w, s)
        scores = (scores.view(B, -1, heads, w * w, w * w) + mask[None, :, None]).flatten(0, 1)
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(windows.shape[0], w * w, C)


def unwindow(windows, w, s, H, W):  # noqa: N803
    x = reverse(windows, w, H, W)
    return torch.roll(x, (s, s), (1, 2)) if s else x


def reference_block(block, x, w, s, tasks):
    """docs/model.md#task-branch with a loop over tasks; ``tasks=()`` gives the shared-only
    block."""
    _B, H, W, C = x.shape
    o = attention(block, x, w, s)
    z = x + unwindow(shared_linear(block.attn.proj, o), w, s, H, W)
    ln2 = lambda t: F.layer_norm(t, (C,), block.norm2.weight, block.norm2.bias)  # noqa: E731
    u = ln2(z)
    g = F.gelu(shared_linear(block.mlp.fc1, u))
    shared = z + shared_linear(block.mlp.fc2, g)
    outs = []
    for task in tasks:
        z_t = x + unwindow(task_linear(block.attn.proj, task, o, o), w, s, H, W)
        g_t = F.gelu(task_linear(block.mlp.fc1, task, u, ln2(z_t)))
        outs.append(z_t + task_linear(block.mlp.fc2, task, g, g_t))
    return shared, outs


def official_merge(merge, x):
    """Official PatchMerging: concat x0 = [0::2, 0::2], x1 = [1::2, 0::2], x2, x3, LN, reduction."""
    x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
    x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    y = torch.cat([x0, x1, x2, x3], -1)
    y = F.layer_norm(y, (y.shape[-1],), merge.norm.weight, merge.norm.bias)
    return y @ merge.reduction.weight.T


def reference_backbone(backbone, images):
    x = backbone.patch_embed(images)
    feats = []
    for i, stage in enumerate(backbone.layers):
        for j, block in enumerate(stage.blocks):
            last = j == len(stage.blocks) - 1
            shift = 2 if j % 2 and x.shape[1] > 4 else 0
            x, task_x = reference_block(block, x, min(4, x.shape[1]), shift, TASKS if last else ())
        if i + 1 < len(backbone.layers):
            merge = backbone.layers[i + 1].downsample
            x = official_merge(merge, x)
            task_x = [official_merge(merge, t) for t in task_x]
        feats.append(torch.stack(task_x).permute(0, 1, 4, 2, 3))
    return feats


# -- tests ---------------------------------------------------------------------------------------


def test_last_block_matches_reference() -> None:
    backbone = make_backbone().eval()
    block = backbone.layers[0].blocks[1]  # shifted, 16x16 grid, window 4
    x = torch.randn(2, 16, 16, 24)
    shared, tasks = block_forward_tasks(block, x)
    ref_shared, ref_tasks = reference_block(block, x, 4, 2, TASKS)
    torch.testing.assert_close(shared, ref_shared, rtol=1e-5, atol=1e-5)
    assert tasks.shape == (3 * 2, 16, 16, 24)
    for index in range(3):
        torch.testing.assert_close(
            tasks[2 * index : 2 * index + 2], ref_tasks[index], rtol=1e-5, atol=1e-5
        )


def test_backbone_matches_reference_stage_flow() -> None:
    backbone = make_backbone().eval()
    images = torch.randn(2, 3, 64, 64)
    feats = backbone(images)
    ref = reference_backbone(backbone, images)
    for ours, theirs in zip(feats, ref, strict=True):
        assert ours.shape == theirs.shape
        # Relative to the feature norm: stage 4 features reach ~100 with these random adapters.
        assert (ours - theirs).norm() / theirs.norm() < 1e-5


def test_drop_path_draws_independently_per_task() -> None:
    backbone = make_backbone(drop_path_rate=0.9)
    block = backbone.layers[3].blocks[1]
    with torch.no_grad():  # identical task adapters: only DropPath can make the tasks differ
        for name in ("lora_tasks_a", "lora_tasks_b"):
            for layer in (block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                params = getattr(layer, name)
                for task in TASKS[1:]:
                    params[task].copy_(params[TASKS[0]])
    block.train()
    _, tasks = block_forward_tasks(block, torch.randn(8, 2, 2, 192))
    per_task = tasks.view(3, 8, -1)
    assert not torch.allclose(per_task[0], per_task[1])
    block.eval()
    _, tasks = block_forward_tasks(block, torch.randn(8, 2, 2, 192))
    torch.testing.assert_close(tasks.view(3, 8, -1)[0], tasks.view(3, 8, -1)[1], rtol=0, atol=0)
