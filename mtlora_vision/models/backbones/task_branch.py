"""MTLoRA's per-task branch at inference, with the task streams kept in low-rank form.

MTLoRA (Agiza et al., CVPR 2024), ``docs/model.md#task-branch``. Without DropPath and dropout (eval
mode) the task stream ``t`` leaving the last block of a stage is

    x'_t = x + p_t + m_t = X0 + [A_p o, A_2 g_t] @ [s_t B_p, s_t B_2]^T   (``q = 2 r_t`` columns),

with ``X0 = x + p0 + m0`` the stream every task starts from: ``p0`` and ``m0`` are ``proj`` and
``fc2`` without task terms (the frozen projections in ``matrix`` mode, the shared outputs in
``matrixv2``), because in both modes the frozen weights read the *shared* activations. Only the
task *coefficients* differ per task (``r_t`` numbers per token and layer). Full-width task tensors
are formed only for the GELU, which is not linear: fc1's ``T`` hidden tensors, one at a time, fused
with fc2's task down-projections (``expand_gelu_project_down``); and the last stage's task streams,
which are its features.

A LayerNorm followed by a linear map ``y_t = L(LN(v_t))`` is computed from the shared ``v0`` and
the coefficients instead of from each ``v_t``: for the next stage's patch merging (``v_t`` four
neighbouring tokens concatenated, ``L`` the reduction, the same for all tasks) and for fc1's task
down-projections after ``norm2`` (``v_t`` the task stream, ``L = A_t`` per task). With
``v_t = v0 + d_t``, ``w0 = v0 - mean(v0)`` and ``D`` the LayerNorm's width:

    mean(v_t) = mean(v0) + mean(d_t)
    var(v_t)  = var(v0) + 2 w0.d_t / D + var(d_t)
    y_t = [L(g * w0) + L(g * (d_t - mean(d_t)))] / sqrt(var(v_t) + eps) + L(b)

where ``g, b`` are the LayerNorm's weight and bias. ``L(g * w0)`` is one full product of the
shared ``w0`` (for all tasks' maps at once); ``d_t`` is low-rank, so ``L(g * (d_t - mean d_t))``,
``w0.d_t`` and ``var(d_t)`` are small matmuls on the coefficients. The variance is formed around
the centred ``w0`` (no ``E[v^2] - mean^2`` cancellation), so the result equals the direct
computation up to float32 rounding. Training keeps the direct path: DropPath draws per task and
sample, which breaks the shared ``X0``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from mtlora_vision.adapters.mtlora import MTLoRALinear, TaskCoefficients, expand_task_factors
from mtlora_vision.models.backbones.swin_blocks import (
    from_windows,
    merge_cells,
    task_mlp_hidden,
    to_windows,
    window_attention,
    window_geometry_of,
)


class TaskStreams(NamedTuple):
    """Task streams of a stage as ``base + coeffs[t] @ factors[t].T``.

    Attributes:
        base: Stream every task starts from, ``(B, H, W, C)``.
        coeffs: Task coefficients ``(T, B, H, W, q)``.
        factors: Task up-projections with scales ``(T, C, q)``.
    """

    base: Tensor
    coeffs: Tensor
    factors: Tensor

    def expand(self) -> Tensor:
        """The task streams ``(T, B, H, W, C)``."""
        return expand_task_factors(self.base, self.coeffs, self.factors)


def supports_factored_branch(block: nn.Module) -> bool:
    """Whether ``block``'s task layers have a mode the factored branch handles (not addition)."""
    layers = (block.attn.proj, block.mlp.fc1, block.mlp.fc2)
    return all(isinstance(m, MTLoRALinear) and m.shared_from_factors for m in layers)


def block_forward_task_streams(
    block: nn.Module, x: Tensor, fused: bool = True
) -> tuple[Tensor, TaskStreams]:
    """Last block of a stage with task branches, eval mode (no DropPath, no dropout).

    Args:
        block: Block whose ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` are ``MTLoRALinear`` with
            tasks in ``matrix`` or ``matrixv2`` mode.
        x: Shared tokens ``(B, H, W, C)``.
        fused: Use fused attention.

    Returns:
        Shared output ``(B, H, W, C)`` and the task streams (module docstring).
    """
    proj, fc1, fc2 = block.attn.proj, block.mlp.fc1, block.mlp.fc2
    B, H, W = x.shape[:3]
    T = proj.num_tasks
    geom = window_geometry_of(block, x)
    attended = window_attention(block.attn, to_windows(block.norm1(x), geom), geom, fused)
    p = proj.forward_task_factors(attended)  # B*nW, N, C and T, B*nW, N, r
    shared = x + from_windows(p.shared, geom, (H, W))
    base = shared if p.base is p.shared else x + from_windows(p.base, geom, (H, W))
    # Permute the r coefficients per token instead of T full-width task outputs.
    coeffs_p = from_windows(p.coeffs.flatten(0, 1), geom, (H, W)).view(T, B, H, W, -1)
    # fc1's task inputs only enter its low-rank terms: project their LayerNorms from the factors.
    task_low = norm_project_down(block.norm2, TaskStreams(base, coeffs_p, p.factors), fc1.task_a())
    shared_in, task_in, task_gelu = task_mlp_hidden(
        block.mlp, block.norm2(shared), task_low, fuse=True, shared_act=block.mlp.act
    )
    m = fc2.forward_task_factors(shared_in, task_in, task_gelu=task_gelu)
    out_shared = shared + m.shared
    out_base = out_shared if base is shared and m.base is m.shared else base + m.base
    streams = TaskStreams(
        out_base, torch.cat([coeffs_p, m.coeffs], -1), torch.cat([p.factors, m.factors], -1)
    )
    return out_shared, streams


def norm_project_down(norm: nn.LayerNorm, streams: TaskStreams, a: Tensor) -> TaskCoefficients:
    """``norm(stream_t) @ a[t]^T`` for every task stream, from the factors (module docstring).

    With ``w0`` the centred base, ``Fc_t`` the centred factors and ``g, b`` the LayerNorm's
    weight and bias: ``rstd_t * [(w0 * g) @ a_t^T + coeffs_t @ (Fc_t * g) @ a_t^T] + a_t b``.

    Args:
        norm: LayerNorm over the streams' channels ``C``.
        streams: Task streams ``(T, ..., C)`` in factored form.
        a: Per-task matrices ``(T, r, C)``.

    Returns:
        ``(T, ..., r)``.
    """
    base, factors = streams.base, streams.factors
    T, q, C = streams.coeffs.shape[0], streams.coeffs.shape[-1], base.shape[-1]
    r = a.shape[1]
    flat = base.reshape(-1, C)  # M, C
    coeffs = streams.coeffs.reshape(T, -1, q)
    centred = flat - flat.mean(-1, keepdim=True)
    a = a.to(flat.dtype)
    # T, r, C: the LayerNorm's weight on the map's side
    scaled = a if norm.weight is None else a * norm.weight.to(a.dtype)
    # One product of w0 with every task's directions (for the variance) and maps (M, T*q + T*r).
    maps = torch.cat([factors.transpose(0, 1).reshape(C, T * q), scaled.flatten(0, 1).t()], 1)
    cross, mapped = (centred @ maps).split([T * q, T * r], -1)
    columns = factors.transpose(1, 2)  # T, q, C
    columns = columns - columns.mean(-1, keepdim=True)  # d_t - mean(d_t) = coeffs_t @ columns_t
    cross = cross.view(-1, T, q).transpose(0, 1)  # T, M, q
    rstd = task_rstd(centred.square().mean(-1), cross, coeffs, columns, norm.eps)  # T, M, 1
    mapped = mapped.view(-1, T, r).transpose(0, 1)  # T, M, r: (w0 * g) @ a_t^T
    out = torch.baddbmm(mapped, coeffs, columns @ scaled.transpose(1, 2))
    if norm.bias is None:
        out = out * rstd
    else:
        out = torch.addcmul((a @ norm.bias.to(a.dtype))[:, None], out, rstd)
    return TaskCoefficients(out.view(T, *base.shape[:-1], r))


def layer_bias(layer: nn.Module) -> Tensor | None:
    """Bias of a linear layer or of the layer an adapter wraps."""
    return layer.base_layer.bias if isinstance(layer, MTLoRALinear) else layer.bias


def linear_map(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` without its bias (a linear layer, or an adapter layer in eval mode)."""
    bias = layer_bias(layer)
    return layer(x) if bias is None else layer(x) - bias


def cell_columns(factors: Tensor, cells: int) -> Tensor:
    """Directions of a merged task delta, ``(T, cells * q, cells * C)`` for ``factors (T, C, q)``.

    Column ``(k, j)`` holds ``factors[t, :, j]`` in block ``k`` and zeros elsewhere, so the delta of
    a merged token is ``coeffs (cells * q) @ columns``.
    """
    T, C, q = factors.shape
    blocks = factors.new_zeros(T, cells, q, cells, C)
    for k in range(cells):
        blocks[:, k, :, k] = factors.transpose(1, 2)
    return blocks.view(T, cells * q, cells * C)


def task_rstd(
    var0: Tensor, cross: Tensor, coeffs: Tensor, centred_columns: Tensor, eps: float
) -> Tensor:
    """``1 / sqrt(var(v_t) + eps)`` of every task's tokens ``v_t = v0 + coeffs_t @ columns_t``.

    ``var(v_t) = var0 + (2 w0.d_t + |d_t - mean(d_t)|^2) / D`` with ``w0 = v0 - mean(v0)`` and
    ``d_t = coeffs_t @ columns_t``; both terms are small products on the coefficients (pure).

    Args:
        var0: Variance of the base tokens, ``(N,)``.
        cross: ``w0 . columns_t[j]`` for every token, task and column, ``(T, N, q)``.
        coeffs: Task coefficients ``(T, N, q)``.
        centred_columns: The task directions minus their means ``(T, q, D)``.
        eps: The LayerNorm's epsilon.

    Returns:
        ``(T, N, 1)``.
    """
    gram = centred_columns @ centred_columns.transpose(1, 2)  # T, q, q
    quad = torch.baddbmm(cross, coeffs, gram, beta=2.0)  # 2 w0.columns + coeffs @ gram
    var = var0 + (quad * coeffs).sum(-1) / centred_columns.shape[-1]
    return torch.rsqrt(var.clamp_min(0.0) + eps).unsqueeze(-1)


def patch_merge_task_streams(merge: nn.Module, streams: TaskStreams) -> Tensor:
    """Patch merging (timm's) of every task stream, ``(T, B, H/2, W/2, C')``, from the factors.

    Args:
        merge: The merging module (``norm`` a LayerNorm over ``4C``, ``reduction`` linear); in
            eval mode if its reduction carries an adapter (MTLoRA+).
        streams: Task streams on an even ``(H, W)`` grid.
    """
    base = merge_cells(streams.base)  # B, H2, W2, 4, C
    B, H2, W2, K, C = base.shape
    T, q = streams.coeffs.shape[0], streams.coeffs.shape[-1]
    coeffs = merge_cells(streams.coeffs.flatten(0, 1)).reshape(T, -1, K * q)  # T, N, 4q
    flat = base.reshape(-1, K * C)  # N, D
    centred = flat - flat.mean(-1, keepdim=True)
    columns = cell_columns(streams.factors, K)
    columns = columns - columns.mean(-1, keepdim=True)  # d_t - mean(d_t) = coeffs @ columns
    # w0 . columns: block-wise, w0's cell k against the factors, so no dense (D x 4q) product.
    cross = centred.view(-1, K, C) @ streams.factors.transpose(0, 1).reshape(C, T * q)
    cross = cross.view(-1, K, T, q).permute(2, 0, 1, 3).reshape(T, -1, K * q)  # T, N, 4q
    var0 = centred.square().mean(-1)
    rstd = task_rstd(var0, cross, coeffs, columns, merge.norm.eps)
    norm, reduction = merge.norm, merge.reduction
    weight = norm.weight if norm.weight is not None else flat.new_ones(K * C)
    bias = norm.bias if norm.bias is not None else flat.new_zeros(K * C)
    shared_part = linear_map(reduction, centred * weight)  # N, C'
    # The task maps R(g * columns) and R(b) in one small call.
    small = linear_map(reduction, torch.cat([(columns * weight).flatten(0, 1), bias[None]]))
    task_maps = small[:-1].view(T, K * q, -1)  # T, 4q, C'
    own_bias = layer_bias(reduction)
    offset = small[-1] if own_bias is None else small[-1] + own_bias
    out = torch.baddbmm(shared_part.expand(T, -1, -1), coeffs, task_maps)
    return torch.addcmul(offset, out, rstd).view(T, B, H2, W2, -1)
