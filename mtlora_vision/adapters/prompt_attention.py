"""Pure attention maths of the TA-LoRA-inspired window prompts (see :mod:`~.prompt`).

TA-LoRA by Zhang, Wang, Hu and Ma, arXiv 2505.00009 (abstract only; this is our design, METHODS
2.3): building the task prompts from the shared prompt and the low-rank task part, projecting
prompt tokens with the frozen ``qkv`` weights, and window attention with the prompts as extra keys
and values, each prompt set in its own gated softmax branch (zero-init attention, as in peft's
``adaption_prompt``). Functions only; the parameters live in
:class:`~.prompt.TaskAdaptiveLowRankPrompt`.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

Compose: TypeAlias = Literal["add", "hadamard"]
SharedFactor: TypeAlias = Literal["left", "right"]


def compose_task_prompts(
    shared: Tensor,
    slow_factor: Tensor,
    fast_factor: Tensor,
    compose: Compose = "add",
    shared_factor: SharedFactor = "left",
) -> Tensor:
    """Build the task prompts ``P_t`` from P0 and the low-rank task part.

    Args:
        shared: P0, ``(L, d)``.
        slow_factor: Shared factor, ``(L, r)`` if ``shared_factor="left"`` else ``(r, d)``.
        fast_factor: Per-task factors, ``(T, r, d)`` if ``shared_factor="left"`` else ``(T, L, r)``.
        compose: ``"add"``: ``P0 + dP_t``; ``"hadamard"``: ``P0 * dP_t``.
        shared_factor: Which side of ``dP_t`` is shared.

    Returns:
        Task prompts ``(T, L, d)``.
    """
    if shared_factor == "left":
        low_rank = torch.einsum("lr,trd->tld", slow_factor, fast_factor)
    else:
        low_rank = torch.einsum("tlr,rd->tld", fast_factor, slow_factor)
    return shared + low_rank if compose == "add" else shared * low_rank


def project_prompt_kv(
    tokens: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, num_heads: int
) -> tuple[Tensor, Tensor]:
    """Project prompt tokens to keys and values with the k and v rows of a fused ``qkv`` layer.

    Args:
        tokens: Prompt tokens ``(..., L, C)``.
        qkv_weight: Fused weight ``(3 * h * hd, C)`` laid out as timm's ``(3, h, hd)`` output.
        qkv_bias: Fused bias ``(3 * h * hd,)`` or ``None``.
        num_heads: Number of heads ``h``.

    Returns:
        Keys and values, each ``(..., h, L, hd)``.
    """
    head_dim, remainder = divmod(qkv_weight.shape[0], 3 * num_heads)
    if remainder or qkv_weight.shape[1] != tokens.shape[-1]:
        raise ValueError(
            f"qkv weight of shape {tuple(qkv_weight.shape)} does not fit {num_heads} heads and "
            f"prompt tokens of width {tokens.shape[-1]}."
        )
    inner = head_dim * num_heads
    bias = None if qkv_bias is None else qkv_bias[inner:]
    kv = F.linear(tokens, qkv_weight[inner:], bias)  # ..., L, 2*h*hd
    kv = kv.unflatten(-1, (2, num_heads, head_dim)).movedim(-4, -2)  # ..., 2, h, L, hd
    return kv.select(-4, 0), kv.select(-4, 1)


def _gated_attention(queries: Tensor, keys: Tensor, gated_values: Tensor, subsets: int) -> Tensor:
    """Attend each group's windows to its prompt tokens, one softmax per subset of tokens.

    Args:
        queries: Scaled queries ``(G, M, h, N, hd)``.
        keys: Prompt keys ``(G, h, S * L, hd)``, ``S = subsets`` blocks of ``L`` tokens.
        gated_values: Prompt values times their per-head gates, ``(G, h, S * L, hd)``.
        subsets: Number ``S`` of token blocks, each with its own softmax.

    Returns:
        ``sum_s softmax(q K_s^T) (g_s V_s)``, ``(G, M, h, N, hd)``.
    """
    # Logits laid out (.., L, N) with the softmax over dim -2: CPU softmax over a short last dim
    # (L ~ 10) is several times slower. A zero gate zeroes the values, so a branch adds exact 0.
    logits = torch.einsum("gmhnd,ghld->gmhln", queries, keys)
    probs = torch.softmax(logits.unflatten(-2, (subsets, -1)), dim=-2).flatten(-3, -2)
    return torch.einsum("gmhln,ghld->gmhnd", probs, gated_values)


def _image_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_pos_bias: Tensor | None,
    mask: Tensor | None,
    joint_k: Tensor | None,
    joint_v: Tensor | None,
) -> Tensor:
    """Softmax attention of scaled ``q`` over the image keys (and P0's in joint mode).

    The order of operations is timm's non-fused ``WindowAttention`` (the same results bit for bit).
    Shapes: ``q, k, v`` ``(B_, h, N, hd)``; ``joint_k, joint_v`` ``(h, L0, hd)``; returns
    ``(B_, h, N, hd)``.
    """
    heads, tokens = q.shape[1], q.shape[2]
    attn = q @ k.transpose(-2, -1)  # B_, h, N, N
    if rel_pos_bias is not None:
        attn = attn + rel_pos_bias
    if mask is not None:
        num_win = mask.shape[0]
        attn = attn.view(-1, num_win, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, tokens, tokens)
    if joint_k is None or joint_v is None:
        return torch.softmax(attn, dim=-1) @ v
    prompt_logits = torch.einsum("bhnd,hld->bhnl", q, joint_k)
    attn = torch.softmax(torch.cat([attn, prompt_logits], dim=-1), dim=-1)  # B_, h, N, N+L0
    return attn @ torch.cat([v, joint_v.expand(v.shape[0], -1, -1, -1)], dim=2)


def _gated_prompt_sets(
    windows: int,
    task_kv: tuple[Tensor, Tensor, Tensor] | None,
    shared_kv: tuple[Tensor, Tensor, Tensor] | None,
) -> list[tuple[Tensor, Tensor, int]]:
    """Group the gated prompt sets as ``(keys, gated values, subsets)`` for ``_gated_attention``.

    Keys and values are ``(G, h, S * L, hd)``: ``G = T`` for task sets, 1 for the shared set alone.
    Shared and task sets of equal length are fused into one ``S = 2`` entry (the shared set repeated
    per task), which halves the passes over the queries and the output.
    """
    groups = 1 if task_kv is None else task_kv[0].shape[0]
    if windows % groups:
        raise ValueError(
            f"{windows} stacked windows cannot be split into {groups} task blocks; stack the "
            "windows task-major with the same count per task."
        )
    sets = []
    for keys, values, gate in (kv for kv in (shared_kv, task_kv) if kv is not None):
        gated = values * gate.view(-1, 1, 1).to(values.dtype)
        if keys.dim() == 3:  # shared: h, L0, hd
            keys, gated = keys.unsqueeze(0), gated.unsqueeze(0)
        sets.append((keys, gated, 1))
    if len(sets) == 2 and sets[0][0].shape[-2] == sets[1][0].shape[-2]:
        keys = torch.cat([sets[0][0].expand(groups, -1, -1, -1), sets[1][0]], dim=-2)
        gated = torch.cat([sets[0][1].expand(groups, -1, -1, -1), sets[1][1]], dim=-2)
        sets = [(keys, gated, 2)]
    return sets


def prompt_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    task_k: Tensor | None = None,
    task_v: Tensor | None = None,
    task_gate: Tensor | None = None,
    shared_k: Tensor | None = None,
    shared_v: Tensor | None = None,
    shared_gate: Tensor | None = None,
    rel_pos_bias: Tensor | None = None,
    mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Window attention with prompt keys/values appended, batched over task-major stacked windows.

    The image-image part is computed in the same order as timm's non-fused ``WindowAttention``, so
    with zero gates the result equals timm's bit for bit.

    Args:
        q: Queries ``(T * M, h, N, hd)``, ``M = B * nW`` windows per task, task-major.
        k: Image keys ``(T * M, h, N, hd)``.
        v: Image values ``(T * M, h, N, hd)``.
        task_k: Task prompt keys ``(T, h, L, hd)``; ``T`` fixes the stacking. ``None``: no task
            branch.
        task_v: Task prompt values ``(T, h, L, hd)``.
        task_gate: Per-head gate of the task branch ``(h,)``.
        shared_k: Shared prompt keys ``(h, L0, hd)`` or ``None``.
        shared_v: Shared prompt values ``(h, L0, hd)``.
        shared_gate: Per-head gate ``(h,)`` of P0's own softmax branch; ``None`` puts P0 into the
            image softmax instead ("joint").
        rel_pos_bias: Relative position bias ``(h, N, N)`` or ``(1, h, N, N)``, image pairs only.
        mask: Shifted-window mask ``(nW, N, N)`` (0 / ``MASK_VALUE``), image pairs only.
        scale: Logit scale; ``hd ** -0.5`` if ``None``.

    Returns:
        Attention output per head ``(T * M, h, N, hd)`` (before the output projection).
    """
    if shared_k is not None and shared_v is None:
        raise ValueError("shared_k needs shared_v as well.")
    gated = shared_k is not None and shared_gate is not None
    branches = gated_prompt_attention(  # also checks the task arguments
        q,
        task_k=task_k,
        task_v=task_v,
        task_gate=task_gate,
        shared_k=shared_k if gated else None,
        shared_v=shared_v if gated else None,
        shared_gate=shared_gate if gated else None,
        scale=scale,
    )
    scaled = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    joint_k, joint_v = (None, None) if gated else (shared_k, shared_v)
    return _image_attention(scaled, k, v, rel_pos_bias, mask, joint_k, joint_v) + branches


def _gated_branches(
    q: Tensor,
    task_kv: tuple[Tensor, Tensor, Tensor] | None,
    shared_kv: tuple[Tensor, Tensor, Tensor] | None,
) -> list[Tensor]:
    """Outputs ``(T * M, h, N, hd)`` of the gated prompt branches for scaled queries ``q``."""
    windows, heads, tokens, head_dim = q.shape
    branches = []
    for keys, gated_values, subsets in _gated_prompt_sets(windows, task_kv, shared_kv):
        grouped = q.reshape(keys.shape[0], -1, heads, tokens, head_dim)  # G, M, h, N, hd
        prompt_out = _gated_attention(grouped, keys, gated_values, subsets)
        branches.append(prompt_out.reshape(windows, heads, tokens, head_dim))
    return branches


def gated_prompt_attention(
    q: Tensor,
    *,
    task_k: Tensor | None = None,
    task_v: Tensor | None = None,
    task_gate: Tensor | None = None,
    shared_k: Tensor | None = None,
    shared_v: Tensor | None = None,
    shared_gate: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Sum of the gated prompt branches alone, to add to any image attention output.

    In ``shared_mode="gated"`` the prompts never touch the image softmax, so a backbone can keep
    its own (e.g. fused ``scaled_dot_product_attention``) window attention and add this term; with
    zero gates the term is exactly 0 and the backbone's output is unchanged bit for bit.

    Args:
        q: Queries ``(T * M, h, N, hd)``, task-major, unscaled.
        task_k: Task prompt keys ``(T, h, L, hd)`` or ``None``.
        task_v: Task prompt values ``(T, h, L, hd)``.
        task_gate: Per-head gate of the task branch ``(h,)``.
        shared_k: Shared prompt keys ``(h, L0, hd)`` or ``None``.
        shared_v: Shared prompt values ``(h, L0, hd)``.
        shared_gate: Per-head gate of P0's branch ``(h,)``; required with ``shared_k``.
        scale: Logit scale; ``hd ** -0.5`` if ``None``.

    Returns:
        ``(T * M, h, N, hd)``, zeros if no prompt set is given.
    """
    if task_k is not None and (task_v is None or task_gate is None):
        raise ValueError("task_k needs task_v and task_gate as well.")
    if shared_k is not None and (shared_v is None or shared_gate is None):
        raise ValueError("shared_k needs shared_v and shared_gate as well (joint P0 needs k, v).")
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    task_kv = None if task_k is None else (task_k, task_v, task_gate)
    shared_kv = None if shared_k is None else (shared_k, shared_v, shared_gate)
    branches = _gated_branches(q, task_kv, shared_kv)
    return sum(branches[1:], branches[0]) if branches else torch.zeros_like(q)
