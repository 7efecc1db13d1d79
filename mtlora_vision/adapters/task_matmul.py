"""Per-task linear maps over the rows of a task layout (:mod:`~.task_layout`): pure tensor kernels.

Each task-conditioned layer applies a different matrix to the rows of each task. Rows of a
task-stacked batch form ``T'`` equal blocks (task-major), so one batched matmul serves all tasks;
rows of a mixed batch gather their own matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def merging_pays_off(rows_per_task: int, in_features: int, out_features: int) -> bool:
    """Whether merging ``W + Delta W_t`` on the fly beats adding the low-rank terms.

    Per task block, merging costs the ``(out, r) @ (r, in)`` product, ``r * in * out``
    multiply-adds (the merged matmul then costs what the frozen one does); the low-rank path costs
    ``M * r * (in + out)`` for ``M`` rows. The rank cancels out.

    Args:
        rows_per_task: Rows ``M`` (tokens of every sample) of one task block.
        in_features: Input width of the layer.
        out_features: Output width of the layer.
    """
    return rows_per_task * (in_features + out_features) > in_features * out_features


def stacked_matmul_add(out: Tensor, inputs: Tensor, matrices: Tensor) -> Tensor:
    """``out + inputs_t @ matrices_t^T`` for each task block ``t`` of a task-stacked batch.

    Args:
        out: ``(N, ..., o)`` with ``N = T' * B``.
        inputs: ``(N, ..., r)``, the same rows.
        matrices: ``(T', o, r)``, one per block, in the order of the blocks.

    Returns:
        ``(N, ..., o)``, a new tensor.
    """
    blocks = matrices.shape[0]
    grouped = inputs.reshape(blocks, -1, inputs.shape[-1])  # T', M, r
    base = out.reshape(blocks, -1, out.shape[-1])  # T', M, o
    return torch.baddbmm(base, grouped, matrices.transpose(1, 2)).view(out.shape)


def per_row_matmul_add(out: Tensor, inputs: Tensor, matrices: Tensor, ids: Tensor) -> Tensor:
    """``out + inputs_n @ matrices_{ids[n]}^T`` for every leading row ``n`` of a mixed batch.

    Allocates ``(N, o, r)``: cheap when each row carries many tokens (Swin windows), wasteful for
    2-D inputs with many rows, where a task-stacked layout is the better choice.

    Args:
        out: ``(N, ..., o)``.
        inputs: ``(N, ..., r)``.
        matrices: ``(T, o, r)``, one per task.
        ids: int64 ``(N,)``, each row's task (checked: :func:`~.task_layout.checked_task_ids`).

    Returns:
        ``(N, ..., o)``, a new tensor.
    """
    per_row = matrices.index_select(0, ids)  # N, o, r
    rows = inputs.shape[0]
    base = out.reshape(rows, -1, out.shape[-1])  # N, tokens, o
    grouped = inputs.reshape(rows, -1, inputs.shape[-1])  # N, tokens, r
    return torch.baddbmm(base, grouped, per_row.transpose(1, 2)).view(out.shape)


def stacked_linear(x: Tensor, weights: Tensor, bias: Tensor | None) -> Tensor:
    """``x_t @ weights_t^T + bias`` for each task block ``t``, as one batched matmul.

    Args:
        x: ``(N, ..., in)`` with ``N = T' * B``.
        weights: ``(T', out, in)``.
        bias: ``(out,)`` shared by the blocks, or None.

    Returns:
        ``(N, ..., out)``.
    """
    if weights.shape[0] == 1:
        return F.linear(x, weights[0], bias)
    grouped = x.reshape(weights.shape[0], -1, x.shape[-1])  # T', M, in
    if bias is None:
        out = torch.bmm(grouped, weights.transpose(1, 2))  # T', M, out
    else:
        out = torch.baddbmm(bias, grouped, weights.transpose(1, 2))
    return out.view(*x.shape[:-1], weights.shape[1])
