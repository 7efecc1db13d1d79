"""Task-adaptive low-rank visual prompts for window attention (method key ``ta_lora_prompt``).

TA-LoRA-inspired visual prompt adapter (faithful to the abstract; details unspecified by the paper).
TA-LoRA by Zhang, Wang, Hu and Ma, arXiv 2505.00009: multi-task prompt tuning with a low-rank task
part, fast (task) and slow (shared) weights, and zero-initialised attention during warm-up. It is
NOT "Task-Aware LoRA" for SAM (arXiv 2403.10971). Only the abstract is public; everything below
beyond it is our design (``/work/shared/reference/METHODS.md`` section 2.3), with its open choices
configurable.

Per attention layer (one module per Swin block, "deep" prompts), with ``L`` tokens of width ``d``::

    P0                                   shared prompt (L, d), "original prompt", slow
    dP_t = S F_t  (shared_factor=left)   S: (L, r) shared slow factor, F_t: (r, d) fast, per task
    dP_t = F_t S  (shared_factor=right)  F_t: (L, r) fast, per task, S: (r, d) shared slow factor
    P_t  = P0 + dP_t (compose=add)  or  P0 * dP_t (compose=hadamard, as multitask prompt tuning)

The tokens never become outputs: the frozen ``qkv`` weights project them to keys and values only,
shared by every window, so window partition, shift and patch merging are untouched. For queries
``q`` of a window with image keys ``k`` and values ``v`` (scale ``s``)::

    out = softmax(s q k^T + rel_pos_bias + shift_mask) v            image-image pairs only
        + g_0 * softmax(s q K_0^T) V_0                              P0 (shared_mode="gated")
        + g_task * softmax(s q K_t^T) V_t                           task tokens P_t

``g_0`` and ``g_task`` are per-head gates initialised to 0 (zero-init attention, as in peft's
``adaption_prompt``), so a fresh adapter leaves the frozen model bit-for-bit unchanged. With
``shared_mode="joint"`` P0's keys join the image keys in the normal softmax instead (the literal
design): that changes outputs at step 0, as any prefix does, so it is not the default.

Fast and slow weights are told apart by parameter names: ``prompt_slow_*`` (P0 and the shared
factor), ``prompt_fast_*`` (per-task factors) and ``prompt_gate_*``. With mmengine, give the fast
ones their own learning rate by substring, e.g.
``paramwise_cfg=dict(custom_keys={"prompt_fast": dict(lr_mult=10.0)})``. During warm-up epochs the
task gate is either trained from 0 (``warmup_mode="learn_gate"``) or held where it is
(``"frozen_gate"``), which keeps immature task tokens out; an engine hook toggles
:meth:`TaskAdaptiveLowRankPrompt.set_warmup`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_vision.adapters.mtl_lora import normalize_task_names

logger = logging.getLogger(__name__)

METHOD_NAME = "ta_lora_prompt"
PROMPT_FAST_KEY = "prompt_fast"
PROMPT_SLOW_KEY = "prompt_slow"
PROMPT_GATE_KEY = "prompt_gate"

Compose: TypeAlias = Literal["add", "hadamard"]
SharedFactor: TypeAlias = Literal["left", "right"]
SharedMode: TypeAlias = Literal["gated", "joint"]
WarmupMode: TypeAlias = Literal["frozen_gate", "learn_gate"]
SlowInit: TypeAlias = Literal["svd", "normal"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "compose": ("add", "hadamard"),
    "shared_factor": ("left", "right"),
    "shared_mode": ("gated", "joint"),
    "warmup_mode": ("frozen_gate", "learn_gate"),
    "slow_init": ("svd", "normal"),
}


def _check_choices(**options: str) -> None:
    """Raise ``ValueError`` for an option value outside ``_CHOICES``."""
    for option, value in options.items():
        if value not in _CHOICES[option]:
            raise ValueError(f"Unknown {option}={value!r}; choose from {list(_CHOICES[option])}.")


def _check_int_range(name: str, value: int, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``[low, high]``."""
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not valid or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"Prompt {name} must be an integer {bounds}, got {name}={value!r}.")


class PromptKV(NamedTuple):
    """Prompt keys and values from the frozen ``qkv`` projection.

    Attributes:
        shared_k: Keys of P0, ``(h, L, hd)``.
        shared_v: Values of P0, ``(h, L, hd)``.
        task_k: Keys of the task prompts, ``(T, h, L, hd)``.
        task_v: Values of the task prompts, ``(T, h, L, hd)``.
    """

    shared_k: Tensor
    shared_v: Tensor
    task_k: Tensor
    task_v: Tensor


def prompt_param_role(name: str) -> str | None:
    """Return ``"fast"``, ``"slow"`` or ``"gate"`` for a prompt parameter name, else ``None``."""
    roles = ((PROMPT_FAST_KEY, "fast"), (PROMPT_SLOW_KEY, "slow"), (PROMPT_GATE_KEY, "gate"))
    return next((role for key, role in roles if key in name), None)


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
        mask: Shifted-window mask ``(nW, N, N)`` (0 / -100), image pairs only.
        scale: Logit scale; ``hd ** -0.5`` if ``None``.

    Returns:
        Attention output per head ``(T * M, h, N, hd)`` (before the output projection).
    """
    if task_k is not None and (task_v is None or task_gate is None):
        raise ValueError("task_k needs task_v and task_gate as well.")
    if shared_k is not None and shared_v is None:
        raise ValueError("shared_k needs shared_v as well.")
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    gated_shared = shared_k is not None and shared_gate is not None
    joint_k, joint_v = (None, None) if gated_shared else (shared_k, shared_v)
    out = _image_attention(q, k, v, rel_pos_bias, mask, joint_k, joint_v)
    task_kv = None if task_k is None else (task_k, task_v, task_gate)
    shared_kv = (shared_k, shared_v, shared_gate) if gated_shared else None
    for branch in _gated_branches(q, task_kv, shared_kv):
        out = out + branch
    return out


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


class TaskAdaptiveLowRankPrompt(nn.Module):
    """Prompt tokens of one attention layer: shared P0 plus gated low-rank task prompts.

    Args:
        dim: Token width ``d`` (the input width of the layer's ``qkv``).
        num_heads: Number of attention heads (one gate per head).
        tasks: Task names; their order fixes the rows of the per-task factors.
        num_tokens: Prompt length ``L``.
        rank: Rank ``r`` of the task part, ``1 <= r <= min(L, d)``.
        compose: How P0 and ``dP_t`` form the task prompt: ``"add"`` or ``"hadamard"``.
        shared_factor: Which factor is shared (slow): ``"left"`` ``(L, r)`` or ``"right"``
            ``(r, d)``.
        shared_mode: ``"gated"`` (default, exact identity at step 0) or ``"joint"``.
        warmup_mode: ``"learn_gate"`` or ``"frozen_gate"``; see :meth:`set_warmup`.
        slow_init: ``"svd"``: the shared factor spans P0's top-``r`` singular directions on its
            side; ``"normal"``: N(0, 1). Fast factors are N(0, 1/r) either way, so ``dP_t`` has
            unit-scale entries like P0, which is N(0, 1) as in peft's ``adaption_prompt``.

    Attributes:
        prompt_slow_shared: P0, ``(L, d)``.
        prompt_slow_factor: Shared factor, ``(L, r)`` or ``(r, d)``.
        prompt_fast_factor: Per-task factors, ``(T, r, d)`` or ``(T, L, r)``.
        prompt_gate_task: Task-branch gate per head, ``(h,)``, zeros.
        prompt_gate_shared: P0-branch gate per head, ``(h,)``, zeros (``"gated"`` mode only).
        warmup_active: Whether the layer is in its warm-up epochs.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        tasks: Sequence[str],
        num_tokens: int = 10,
        rank: int = 4,
        compose: Compose = "add",
        shared_factor: SharedFactor = "left",
        shared_mode: SharedMode = "gated",
        warmup_mode: WarmupMode = "learn_gate",
        slow_init: SlowInit = "svd",
    ) -> None:
        super().__init__()
        _check_choices(
            compose=compose,
            shared_factor=shared_factor,
            shared_mode=shared_mode,
            warmup_mode=warmup_mode,
            slow_init=slow_init,
        )
        _check_int_range("dim", dim, 1)
        _check_int_range("num_heads", num_heads, 1)
        _check_int_range("num_tokens", num_tokens, 1)
        _check_int_range("rank", rank, 1, min(num_tokens, dim))
        self.tasks = normalize_task_names(tasks, "TaskAdaptiveLowRankPrompt")
        self.dim, self.num_heads, self.num_tokens, self.rank = dim, num_heads, num_tokens, rank
        self.compose, self.shared_factor, self.shared_mode = compose, shared_factor, shared_mode
        self.warmup_mode, self.slow_init = warmup_mode, slow_init
        self.warmup_active = False
        left = shared_factor == "left"
        num_tasks = len(self.tasks)
        self.prompt_slow_shared = nn.Parameter(torch.empty(num_tokens, dim))
        slow_shape = (num_tokens, rank) if left else (rank, dim)
        self.prompt_slow_factor = nn.Parameter(torch.empty(slow_shape))
        fast_shape = (num_tasks, rank, dim) if left else (num_tasks, num_tokens, rank)
        self.prompt_fast_factor = nn.Parameter(torch.empty(fast_shape))
        self.prompt_gate_task = nn.Parameter(torch.zeros(num_heads))
        if shared_mode == "gated":
            self.prompt_gate_shared = nn.Parameter(torch.zeros(num_heads))
        else:
            self.register_parameter("prompt_gate_shared", None)
        self.reset_prompt_parameters()

    @torch.no_grad()
    def reset_prompt_parameters(self) -> None:
        """Draw P0 and the factors (see the class docstring) and zero the gates."""
        nn.init.normal_(self.prompt_slow_shared)
        nn.init.normal_(self.prompt_fast_factor, std=1.0 / math.sqrt(self.rank))
        if self.slow_init == "normal":
            nn.init.normal_(self.prompt_slow_factor)
        elif self.shared_factor == "left":
            left, _, _ = torch.linalg.svd(self.prompt_slow_shared, full_matrices=False)
            self.prompt_slow_factor.copy_(left[:, : self.rank] * math.sqrt(self.num_tokens))
        else:
            _, _, right = torch.linalg.svd(self.prompt_slow_shared, full_matrices=False)
            self.prompt_slow_factor.copy_(right[: self.rank] * math.sqrt(self.dim))
        nn.init.zeros_(self.prompt_gate_task)
        if self.prompt_gate_shared is not None:
            nn.init.zeros_(self.prompt_gate_shared)

    def set_warmup(self, active: bool) -> None:
        """Enter or leave warm-up; under ``warmup_mode="frozen_gate"`` the task gate is not trained.

        A frozen gate keeps its value (0 for a fresh layer), so the task tokens stay out of the
        output and their factors get zero gradients until warm-up ends.
        """
        self.warmup_active = bool(active)

    def task_indices(self, tasks: str | Sequence[str] | None) -> list[int]:
        """Return the positions of ``tasks`` (one name, several, or ``None`` for all).

        Raises:
            KeyError: If a task name is unknown.
        """
        names = self.tasks if tasks is None else (tasks,) if isinstance(tasks, str) else tasks
        names = normalize_task_names(names, "TaskAdaptiveLowRankPrompt")
        unknown = [name for name in names if name not in self.tasks]
        if unknown:
            raise KeyError(f"Prompt has no task(s) {unknown}; it was built for {list(self.tasks)}.")
        return [self.tasks.index(name) for name in names]

    def task_prompts(self, tasks: str | Sequence[str] | None = None) -> Tensor:
        """Return the task prompts ``P_t`` of ``tasks`` (``None``: all), ``(T', L, d)``."""
        fast = self.prompt_fast_factor[self.task_indices(tasks)]
        return compose_task_prompts(
            self.prompt_slow_shared, self.prompt_slow_factor, fast, self.compose, self.shared_factor
        )

    def prompt_kv(
        self,
        qkv_weight: Tensor,
        qkv_bias: Tensor | None = None,
        tasks: str | Sequence[str] | None = None,
    ) -> PromptKV:
        """Project P0 and the task prompts with the frozen ``qkv`` weights.

        Args:
            qkv_weight: Frozen fused weight ``(3 * h * hd, d)``.
            qkv_bias: Frozen fused bias ``(3 * h * hd,)`` or ``None``.
            tasks: Task name(s) in stacking order; ``None`` for all tasks.

        Returns:
            Keys and values: shared ``(h, L, hd)``, per task ``(T', h, L, hd)``.
        """
        dtype = qkv_weight.dtype
        shared_k, shared_v = project_prompt_kv(
            self.prompt_slow_shared.to(dtype), qkv_weight, qkv_bias, self.num_heads
        )
        task_k, task_v = project_prompt_kv(
            self.task_prompts(tasks).to(dtype), qkv_weight, qkv_bias, self.num_heads
        )
        return PromptKV(shared_k, shared_v, task_k, task_v)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        qkv_weight: Tensor,
        qkv_bias: Tensor | None = None,
        tasks: str | Sequence[str] | None = None,
        rel_pos_bias: Tensor | None = None,
        mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        """Run window attention with this layer's prompts (see :func:`prompt_window_attention`).

        Args:
            q: Queries ``(T' * M, h, N, hd)``, task-major in the order of ``tasks``.
            k: Image keys ``(T' * M, h, N, hd)``.
            v: Image values ``(T' * M, h, N, hd)``.
            qkv_weight: Frozen fused ``qkv`` weight ``(3 * h * hd, d)``.
            qkv_bias: Frozen fused ``qkv`` bias ``(3 * h * hd,)`` or ``None``.
            tasks: One task (every window), several stacked task-major, or ``None`` for all.
            rel_pos_bias: Relative position bias ``(h, N, N)``, image pairs only.
            mask: Shifted-window mask ``(nW, N, N)``, image pairs only.
            scale: Logit scale; ``hd ** -0.5`` if ``None``.

        Returns:
            Attention output per head ``(T' * M, h, N, hd)``.
        """
        self._check_heads(q)
        kv = self.prompt_kv(qkv_weight, qkv_bias, tasks)
        return prompt_window_attention(
            q,
            k,
            v,
            task_k=kv.task_k,
            task_v=kv.task_v,
            task_gate=self._task_gate(),
            shared_k=kv.shared_k,
            shared_v=kv.shared_v,
            shared_gate=self.prompt_gate_shared,
            rel_pos_bias=rel_pos_bias,
            mask=mask,
            scale=scale,
        )

    def residual(
        self,
        q: Tensor,
        qkv_weight: Tensor,
        qkv_bias: Tensor | None = None,
        tasks: str | Sequence[str] | None = None,
        scale: float | None = None,
    ) -> Tensor:
        """Return only the gated prompt branches, to add to the backbone's own window attention.

        See :func:`gated_prompt_attention`; arguments as in :meth:`forward`. Only for
        ``shared_mode="gated"``: in joint mode P0 must enter the image softmax (use
        :meth:`forward`).

        Returns:
            ``(T' * M, h, N, hd)``.
        """
        if self.shared_mode != "gated":
            raise ValueError(
                "residual() needs shared_mode='gated'; with 'joint' P0 joins the image softmax, "
                "so call the prompt module's forward() instead."
            )
        self._check_heads(q)
        kv = self.prompt_kv(qkv_weight, qkv_bias, tasks)
        return gated_prompt_attention(
            q,
            task_k=kv.task_k,
            task_v=kv.task_v,
            task_gate=self._task_gate(),
            shared_k=kv.shared_k,
            shared_v=kv.shared_v,
            shared_gate=self.prompt_gate_shared,
            scale=scale,
        )

    def _task_gate(self) -> Tensor:
        """The task gate, detached while a ``frozen_gate`` warm-up is on."""
        if self.warmup_active and self.warmup_mode == "frozen_gate":
            return self.prompt_gate_task.detach()
        return self.prompt_gate_task

    def _check_heads(self, q: Tensor) -> None:
        if q.dim() != 4 or q.shape[1] != self.num_heads:
            raise ValueError(
                f"Prompt built for {self.num_heads} heads needs q (B_, {self.num_heads}, N, hd), "
                f"got shape {tuple(q.shape)}."
            )

    def extra_repr(self) -> str:
        """Summarise the layer's sizes and options for ``repr``."""
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_tokens={self.num_tokens}, "
            f"rank={self.rank}, compose={self.compose!r}, shared_factor={self.shared_factor!r}, "
            f"shared_mode={self.shared_mode!r}, warmup_mode={self.warmup_mode!r}, "
            f"tasks={list(self.tasks)}"
        )
