"""Task-adaptive low-rank visual prompts for window attention (method key ``ta_lora_prompt``).

TA-LoRA-inspired visual prompt adapter (faithful to the abstract; details unspecified by the paper).
TA-LoRA by Zhang, Wang, Hu and Ma, arXiv 2505.00009: multi-task prompt tuning with a low-rank task
part, fast (task) and slow (shared) weights, and zero-initialised attention during warm-up. It is
NOT "Task-Aware LoRA" for SAM (arXiv 2403.10971). Only the abstract is public; everything below
beyond it is our design (``docs/methods.md#ta-lora``), with its open choices
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
design): that changes outputs at step 0, as any prefix does, so it is not the default. The Swin
backbone runs both modes (``TALoRAPromptConfig.shared_mode``). The attention maths are the pure
functions of :mod:`~.prompt_attention`.

Fast and slow weights are told apart by parameter names: ``prompt_slow_*`` (P0 and the shared
factor), ``prompt_fast_*`` (per-task factors) and ``prompt_gate_*``. With mmengine, give the fast
ones their own learning rate by substring, e.g.
``paramwise_cfg=dict(custom_keys={"prompt_fast": dict(lr_mult=10.0)})``
(``fast_slow="lr_ratio"``). The other two fast-slow mechanisms are driven by engine hooks
(:mod:`mtlora_vision.engine.fast_slow`): ``"lookahead"`` (a Lookahead-style slow update of the slow
weights) and ``"two_phase"`` (slow weights first, then the fast ones), the latter by holding a
role's parameters out of the graph (:meth:`TaskAdaptiveLowRankPrompt.set_frozen_roles`).

During warm-up epochs the task gate is either trained from 0 (``warmup_mode="learn_gate"``) or
held where it is (``"frozen_gate"``), which keeps immature task tokens out; an engine hook
toggles :meth:`TaskAdaptiveLowRankPrompt.set_warmup`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple, TypeAlias

import torch
from torch import Tensor, nn

from mtlora_vision.adapters.checks import check_int
from mtlora_vision.adapters.prompt_attention import (
    Compose,
    SharedFactor,
    compose_task_prompts,
    gated_prompt_attention,
    project_prompt_kv,
)
from mtlora_vision.adapters.task_conditioned_config import PromptSettings
from mtlora_vision.adapters.task_layout import normalize_task_names

logger = logging.getLogger(__name__)

PROMPT_FAST_KEY = "prompt_fast"
PROMPT_SLOW_KEY = "prompt_slow"
PROMPT_GATE_KEY = "prompt_gate"

SharedMode: TypeAlias = Literal["gated", "joint"]
WarmupMode: TypeAlias = Literal["frozen_gate", "learn_gate"]
SlowInit: TypeAlias = Literal["svd", "normal"]
FastSlow: TypeAlias = Literal["lr_ratio", "lookahead", "two_phase"]

#: Roles whose parameters :meth:`TaskAdaptiveLowRankPrompt.set_frozen_roles` can hold.
FREEZABLE_ROLES = frozenset({"fast", "slow"})


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
        fast_slow: How fast and slow weights differ: ``"lr_ratio"`` (learning rates only, set by
            the optimizer config), ``"lookahead"`` or ``"two_phase"``. The last two need their
            engine hook (:class:`~mtlora_vision.engine.fast_slow.LookaheadHook`,
            :class:`~mtlora_vision.engine.fast_slow.TwoPhaseHook`); training without it is an
            error, not a silent fallback to plain training.

    Attributes:
        prompt_slow_shared: P0, ``(L, d)``.
        prompt_slow_factor: Shared factor, ``(L, r)`` or ``(r, d)``.
        prompt_fast_factor: Per-task factors, ``(T, r, d)`` or ``(T, L, r)``.
        prompt_gate_task: Task-branch gate per head, ``(h,)``, zeros.
        prompt_gate_shared: P0-branch gate per head, ``(h,)``, zeros (``"gated"`` mode only).
        warmup_active: Whether the layer is in its warm-up epochs.
        frozen_roles: Roles (``"fast"``, ``"slow"``) whose parameters are held: detached in the
            forward pass, so they get no gradient and the optimizer neither steps nor decays them.
        fast_slow_driver: Name of the hook that drives ``fast_slow`` (set by the hook), or None.
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
        fast_slow: FastSlow = "lr_ratio",
    ) -> None:
        super().__init__()
        PromptSettings(  # validates them
            num_tokens=num_tokens,
            rank=rank,
            compose=compose,
            shared_factor=shared_factor,
            shared_mode=shared_mode,
            warmup_mode=warmup_mode,
            slow_init=slow_init,
            fast_slow=fast_slow,
        )
        check_int("dim", dim)
        check_int("num_heads", num_heads)
        if rank > dim:
            raise ValueError(f"Prompt rank={rank} must not exceed the token width dim={dim}.")
        self.tasks = normalize_task_names(tasks, "TaskAdaptiveLowRankPrompt")
        self.dim, self.num_heads, self.num_tokens, self.rank = dim, num_heads, num_tokens, rank
        self.compose, self.shared_factor, self.shared_mode = compose, shared_factor, shared_mode
        self.warmup_mode, self.slow_init, self.fast_slow = warmup_mode, slow_init, fast_slow
        self.warmup_active = False
        self.frozen_roles: frozenset[str] = frozenset()
        self.fast_slow_driver: str | None = None
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

    def set_frozen_roles(self, roles: Sequence[str]) -> None:
        """Hold the parameters of ``roles`` out of the graph; an empty sequence trains every role.

        Roles: ``"fast"`` (the per-task factors), ``"slow"`` (P0 and the shared factor).

        A held parameter keeps ``requires_grad`` (so it stays in the optimizer and in trainable-only
        checkpoints) but is detached wherever it is used: its ``.grad`` stays ``None``, which
        AdamW and SGD treat as "skip" (no step, no decoupled weight decay, no moment update).

        Raises:
            ValueError: For a role outside ``FREEZABLE_ROLES``.
        """
        unknown = set(roles) - FREEZABLE_ROLES
        if unknown:
            roles_ok = sorted(FREEZABLE_ROLES)
            raise ValueError(f"Unknown prompt role(s) {sorted(unknown)}; use {roles_ok}.")
        self.frozen_roles = frozenset(roles)

    def _role(self, param: Tensor, role: str) -> Tensor:
        """``param``, detached while ``role`` is held (see :meth:`set_frozen_roles`)."""
        return param.detach() if role in self.frozen_roles else param

    def shared_prompt(self) -> Tensor:
        """P0 ``(L, d)`` as the forward pass uses it (detached while the slow role is held)."""
        self._check_fast_slow_driver()
        return self._role(self.prompt_slow_shared, "slow")

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
        fast = self._role(self.prompt_fast_factor, "fast")[self.task_indices(tasks)]
        slow = self._role(self.prompt_slow_factor, "slow")
        return compose_task_prompts(
            self.shared_prompt(), slow, fast, self.compose, self.shared_factor
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
            self.shared_prompt().to(dtype), qkv_weight, qkv_bias, self.num_heads
        )
        task_k, task_v = project_prompt_kv(
            self.task_prompts(tasks).to(dtype), qkv_weight, qkv_bias, self.num_heads
        )
        return PromptKV(shared_k, shared_v, task_k, task_v)

    def residual(
        self,
        q: Tensor,
        qkv_weight: Tensor,
        qkv_bias: Tensor | None = None,
        tasks: str | Sequence[str] | None = None,
        scale: float | None = None,
    ) -> Tensor:
        """Return only the gated prompt branches, to add to the backbone's own window attention.

        See :func:`gated_prompt_attention`. Only for ``shared_mode="gated"``: in joint mode P0
        enters the image softmax (the backbone appends its keys, see
        :meth:`~mtlora_vision.models.backbones.task_conditioned.WindowPrompt.joint_kv`).

        Args:
            q: Queries ``(T' * M, h, N, hd)``, task-major in the order of ``tasks``.
            qkv_weight: Frozen fused ``qkv`` weight ``(3 * h * hd, d)``.
            qkv_bias: Frozen fused ``qkv`` bias ``(3 * h * hd,)`` or ``None``.
            tasks: One task (every window), several stacked task-major, or ``None`` for all.
            scale: Logit scale; ``hd ** -0.5`` if ``None``.

        Returns:
            ``(T' * M, h, N, hd)``.
        """
        if self.shared_mode != "gated":
            raise ValueError(
                "residual() needs shared_mode='gated'; with 'joint' P0 joins the image softmax "
                "(the backbone's window attention appends its keys and values)."
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

    def _check_fast_slow_driver(self) -> None:
        """Refuse to train a ``lookahead``/``two_phase`` layer that no hook drives."""
        needs_hook = self.fast_slow != "lr_ratio" and self.fast_slow_driver is None
        if needs_hook and self.training and torch.is_grad_enabled():
            hook = "LookaheadHook" if self.fast_slow == "lookahead" else "TwoPhaseHook"
            raise RuntimeError(
                f"Prompt built with fast_slow={self.fast_slow!r} is training without its driver: "
                f"add dict(type={hook}, ...) from mtlora_vision.engine.fast_slow to custom_hooks "
                "(see configs/methods/ta-lora-*_swin-t_pascal.py), or set "
                "model.adapter.fast_slow='lr_ratio'."
            )

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
            f"fast_slow={self.fast_slow!r}, tasks={list(self.tasks)}"
        )
