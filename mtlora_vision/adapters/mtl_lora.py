"""MTL-LoRA: a shared low-rank update made task-specific by per-task transforms and mixing.

Yang et al., "MTL-LoRA: Low-Rank Adaptation for Multi-Task Learning", arXiv 2410.09437. The layer
follows the official release (``init="official"``, the default) and offers the AdapterHub
``adapters`` library's initialisation as a switch (``init="adapters"``); see
``docs/methods.md#mtl-lora-official-release`` for what each one does.

For a frozen linear layer ``W`` (out x in) and a row of task ``t``::

    h = W x + b + s * B~_t Lambda_t A drop(x)
    B~_t = sum_i softmax(w_t / tau)_i B^i,   s = alpha / r

``A`` (r x in) and the ``n`` up-projections ``B^i`` (out x r) are shared by all tasks; ``Lambda_t``
(r x r, or diagonal) and the mixing logits ``w_t`` (n) belong to task ``t``. ``B^i`` start at zero,
so the adapted layer equals the frozen one at step 0.

Task layouts (single-task, task-stacked or mixed rows) are those of :mod:`~.task_layout`. A
backbone whose blocks call ``layer(x)`` without extra arguments sets the layout once with
:func:`set_active_tasks`. The settings are checked by
:class:`~.task_conditioned_config.MTLLoRASettings`; the per-task kernels are :mod:`~.task_matmul`.

Merging. ``Delta W_t = s * B~_t Lambda_t A`` is one fixed matrix per task, so a single-task batch
can run on ``W + Delta W_t`` (:meth:`MTLLoRALinear.merge`, :meth:`MTLLoRALinear.merged_weight`).
There is no single merged model for all tasks: serving T tasks from merged weights needs T copies
of ``W``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_vision.adapters.gap_dropout import GapDropout
from mtlora_vision.adapters.task_conditioned_config import MTLLoRASettings
from mtlora_vision.adapters.task_layout import TaskLayout, checked_task_ids, normalize_task_names
from mtlora_vision.adapters.task_matmul import (
    merging_pays_off,
    per_row_matmul_add,
    stacked_linear,
    stacked_matmul_add,
)
from mtlora_vision.recompute import lean_dropout

logger = logging.getLogger(__name__)

MTLLoRAInit: TypeAlias = Literal["official", "adapters"]


@dataclass(frozen=True)
class MTLLoRASpec:
    """What one :class:`MTLLoRALinear` is built from (see :func:`~.inject.inject_adapters`).

    Attributes:
        config: The adapter config (an ``MTLLoRAConfig``: rank, alpha, num_up, temperature,
            dropout, diagonal, init).
        tasks: Task names, in the order of the layer's task rows.
    """

    config: Any
    tasks: tuple[str, ...]


class MTLLoRALinear(nn.Module):
    """Frozen ``nn.Linear`` plus MTL-LoRA: shared ``A``, per-task ``Lambda_t``, mixed ``B^i``.

    Args:
        base_layer: Pretrained layer to wrap; its parameters are frozen here.
        tasks: Task names; their order fixes the row order of the per-task tensors.
        rank: Rank ``r`` of the update.
        alpha: Scaling numerator; the update is scaled by ``alpha / rank``.
        num_up: Number ``n`` of shared up-projections ``B^i``.
        temperature: Softmax temperature ``tau`` of the mixing weights; must be > 0 (the official
            code's default of 0 divides by zero).
        dropout: Dropout probability on the input of ``A``; a :class:`~.gap_dropout.GapDropout`,
            as in MTLoRA's layers (``nn.Dropout``'s mask distribution, fewer draws on the CPU).
        diagonal: Store ``Lambda_t`` as a diagonal ``(r,)`` instead of a full ``(r, r)`` matrix.
            ``None`` takes the default of ``init``: full for ``"official"`` (every released
            training script), diagonal for ``"adapters"`` (its ``"singular_values"`` default).
        init: ``"official"``: ``Lambda_t`` identity (ones if diagonal), mixing logits
            ``kaiming_uniform(a=sqrt(5))``, i.e. ``U(-1/sqrt(n), 1/sqrt(n))``. ``"adapters"``
            (AdapterHub ``MTLLoRAConfig``): mixing logits ones (uniform mix), ``Lambda_t`` all-ones
            ``(r, r)`` (its ``"linear"`` type, a rank-one start) or ones if diagonal. Both draw
            ``A`` from ``kaiming_uniform(a=sqrt(5))`` and set ``B^i`` to zero. The library's other
            defaults (``n_up_projection=1``, ``weights_sharpness=0.05``) are not implied: pass
            ``num_up`` and ``temperature``.

    Attributes:
        lora_a: Shared down-projection ``A``, ``(r, in_features)``.
        lora_lambdas: Task transforms, ``(T, r, r)``, or ``(T, r)`` if ``diagonal``.
        lora_b: Shared up-projections, ``(n, out_features, r)``.
        lora_mix_logits: Mixing logits ``w``, ``(T, n)``.
        active_tasks: Layout used when ``forward`` gets ``tasks=None`` (:func:`set_active_tasks`).
        merged_task: Task whose update is folded into ``base_layer.weight``, or ``None``.
        merge_at_inference: Without autograd, merge ``W + Delta W_t`` on the fly where that is
            cheaper (:meth:`forward`, :func:`~.mtl_lora_merge.set_merge_at_inference`); off by
            default.
    """

    adapter_names: ClassVar[tuple[str, ...]] = (
        "lora_a",
        "lora_lambdas",
        "lora_b",
        "lora_mix_logits",
    )

    def __init__(
        self,
        base_layer: nn.Linear,
        tasks: Sequence[str],
        rank: int = 8,
        alpha: float = 16.0,
        num_up: int = 1,
        temperature: float = 1.0,
        dropout: float = 0.0,
        diagonal: bool | None = None,
        init: MTLLoRAInit = "official",
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MTLLoRALinear wraps an nn.Linear, got {type(base_layer).__name__}.")
        settings = MTLLoRASettings(rank, alpha, num_up, temperature, dropout, diagonal, init)
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.tasks = normalize_task_names(tasks, "MTLLoRALinear")
        self.rank = rank
        self.alpha = float(alpha)
        self.num_up = num_up
        self.temperature = float(temperature)
        self.diagonal = settings.diagonal_lambda
        self.init = init
        self.scaling = self.alpha / rank
        self.dropout = GapDropout(dropout) if dropout > 0 else nn.Identity()
        num_tasks = len(self.tasks)
        dd = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        lambda_shape = (num_tasks, rank) if self.diagonal else (num_tasks, rank, rank)
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **dd))
        self.lora_lambdas = nn.Parameter(torch.empty(lambda_shape, **dd))
        self.lora_b = nn.Parameter(torch.empty(num_up, self.out_features, rank, **dd))
        self.lora_mix_logits = nn.Parameter(torch.empty(num_tasks, num_up, **dd))
        self.active_tasks: TaskLayout | None = None
        self.merged_task: str | None = None
        self.merge_at_inference = False
        self.reset_adapter_parameters()

    @classmethod
    def from_spec(cls, base_layer: nn.Linear, spec: MTLLoRASpec) -> MTLLoRALinear:
        """Wrap ``base_layer`` with the settings of ``spec``."""
        names = [field.name for field in dataclasses.fields(MTLLoRASettings)]
        return cls(base_layer, spec.tasks, **{name: getattr(spec.config, name) for name in names})

    @property
    def in_features(self) -> int:
        """Input width of the wrapped layer."""
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        """Output width of the wrapped layer."""
        return self.base_layer.out_features

    @property
    def merged(self) -> bool:
        """Whether a task's update is folded into ``base_layer.weight``."""
        return self.merged_task is not None

    def reset_adapter_parameters(self) -> None:
        """Initialise the adapter tensors as ``init`` says; ``B^i`` are zero, so the update is 0."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)
        with torch.no_grad():
            if self.init == "official":
                nn.init.kaiming_uniform_(self.lora_mix_logits, a=math.sqrt(5))
                if self.diagonal:
                    self.lora_lambdas.fill_(1.0)
                else:
                    self.lora_lambdas.copy_(torch.eye(self.rank).expand_as(self.lora_lambdas))
            else:
                self.lora_mix_logits.fill_(1.0)
                self.lora_lambdas.fill_(1.0)

    def task_index(self, task: str) -> int:
        """Return the position of ``task`` in ``tasks``.

        Raises:
            KeyError: If the layer has no adapter for ``task``.
        """
        name = str(task.value) if isinstance(task, Enum) else task
        try:
            return self.tasks.index(name)
        except ValueError:
            raise KeyError(
                f"MTLLoRALinear has no task {name!r}; it was built for {list(self.tasks)}."
            ) from None

    def mixing_weights(self) -> Tensor:
        """Return ``softmax(w_t / tau)`` over the up-projections, in float32, ``(T, n)``."""
        return torch.softmax(self.lora_mix_logits.float() / self.temperature, dim=-1)

    def task_transforms(self) -> Tensor:
        """Return ``Lambda_t`` as full matrices, ``(T, r, r)`` (diagonal ones are embedded)."""
        if self.diagonal:
            return torch.diag_embed(self.lora_lambdas)
        return self.lora_lambdas

    def task_up_projections(self) -> Tensor:
        """Return the mixed up-projections ``B~_t = sum_i softmax(w_t/tau)_i B^i``, ``(T, out, r)``.

        The mixing weights are cast to the dtype of ``B^i`` after the float32 softmax.
        """
        weights = self.mixing_weights().to(self.lora_b.dtype)
        return torch.einsum("tn,nor->tor", weights, self.lora_b)

    def task_matrices(self) -> Tensor:
        """Return ``M_t = B~_t Lambda_t`` for every task, ``(T, out, r)``; ``Delta W_t = s M_t A``.

        A diagonal ``Lambda_t`` scales the columns of ``B~_t`` instead of a matmul.
        """
        up = self.task_up_projections()
        if self.diagonal:
            return up * self.lora_lambdas.unsqueeze(1)
        return torch.bmm(up, self.lora_lambdas)

    def get_delta_weight(self, task: str) -> Tensor:
        """Return the update ``Delta W_t = s * B~_t Lambda_t A`` of one task, ``(out, in)``.

        The single source of the update: :meth:`merged_weight`, :meth:`merge` and :meth:`unmerge`
        all use it.
        """
        index = self.task_index(task)
        return self.scaling * (self.task_matrices()[index] @ self.lora_a)

    def merged_weight(self, task: str) -> Tensor:
        """Return ``W + Delta W_t``, ``(out, in)``, whatever task is currently merged in place."""
        weight = self.base_layer.weight
        if self.merged_task is not None:
            weight = weight - self.get_delta_weight(self.merged_task)
        return weight + self.get_delta_weight(task)

    @torch.no_grad()
    def merge(self, task: str) -> None:
        """Fold ``Delta W_t`` into ``base_layer.weight``; then only batches of ``task`` can run.

        A state dict taken while merged holds the merged weight: call :meth:`unmerge` before
        saving.

        Raises:
            ValueError: If another task is merged already, or the merged weight is not finite.
        """
        name = self.tasks[self.task_index(task)]
        if self.merged_task == name:
            logger.info("MTL-LoRA task %r is already merged; nothing to do.", name)
            return
        if self.merged_task is not None:
            raise ValueError(
                f"Task {self.merged_task!r} is merged; call unmerge() before merging {name!r}."
            )
        merged = self.base_layer.weight + self.get_delta_weight(name)
        if not torch.isfinite(merged).all():
            raise ValueError(f"Merging MTL-LoRA task {name!r} gives non-finite weights.")
        self.base_layer.weight.copy_(merged)
        self.merged_task = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged task's ``Delta W_t`` from ``base_layer.weight`` again."""
        if self.merged_task is None:
            logger.warning("unmerge() called on an MTLLoRALinear with no merged task.")
            return
        self.base_layer.weight.sub_(self.get_delta_weight(self.merged_task))
        self.merged_task = None

    def set_active_tasks(self, tasks: TaskLayout | None) -> None:
        """Set the layout used when ``forward`` is called without ``tasks`` (``None`` clears it)."""
        self.active_tasks = tasks

    def forward(self, x: Tensor, tasks: TaskLayout | None = None) -> Tensor:
        """Apply the frozen layer plus each row's task update.

        The low-rank path runs one shared ``A`` matmul, then one batched matmul-add over tasks.
        With :attr:`merge_at_inference` set, autograd off (``torch.no_grad``/``inference_mode``)
        and dropout inactive, name layouts instead run each task's rows through ``W + Delta W_t``
        merged on the fly: one batched matmul, about as cheap as the frozen layer, equal to the
        low-rank path up to float rounding (so not bit-equal to the frozen layer at step 0). Only
        where that is cheaper (:func:`merging_pays_off`): building ``Delta W_t`` costs
        ``r * in * out`` per task, the low-rank terms ``M * r * (in + out)`` for ``M`` rows per
        task, so small inputs (deep Swin stages at 224 px, batch 1) keep the low-rank path.

        Args:
            x: Input ``(N, ..., in_features)``; ``N = T' * B`` for a stacked layout of ``T'`` tasks.
            tasks: A task name (every row), a sequence of task names (task-major stacking, equal
                blocks of rows in that order), or a LongTensor ``(N,)`` of task indices. ``None``
                uses :attr:`active_tasks`.

        Returns:
            Output ``(N, ..., out_features)``.

        Raises:
            ValueError: If no layout is given or set, or it does not fit ``x``.
            KeyError: If a task name is unknown.
            RuntimeError: If a task is merged and ``tasks`` is anything but that task.
        """
        layout = self.active_tasks if tasks is None else tasks
        if layout is None:
            raise ValueError(
                "MTLLoRALinear needs a task layout: pass tasks=... or call set_active_tasks()."
            )
        if self.merged_task is not None:
            return self._forward_in_place_merged(x, layout)
        if isinstance(layout, Tensor):
            ids = checked_task_ids(layout, x.shape[0], self.tasks, x.device)
            low = F.linear(lean_dropout(self.dropout, x), self.lora_a)  # N, ..., r
            matrices = self.task_matrices() * self.scaling  # T, out, r
            return per_row_matmul_add(self.base_layer(x), low, matrices, ids)
        indices = self._stacked_indices(layout, x)
        # GapDropout is an nn.Dropout; inactive means nn.Identity (p = 0) or eval mode.
        dropout_active = isinstance(self.dropout, nn.Dropout) and self.dropout.training
        if self.merge_at_inference and not torch.is_grad_enabled() and not dropout_active:
            rows = x.numel() // (self.in_features * len(indices))
            if merging_pays_off(rows, self.in_features, self.out_features):
                return self._forward_merged_on_the_fly(x, indices)
        return self._forward_low_rank(x, indices)

    def _stacked_indices(self, layout: str | Sequence[str], x: Tensor) -> list[int]:
        """Task positions of a name layout, checked against the leading dimension of ``x``."""
        if isinstance(layout, str):
            return [self.task_index(layout)]
        names = normalize_task_names(layout, "MTLLoRALinear.forward")
        indices = [self.task_index(name) for name in names]
        if len(indices) > 1 and (x.dim() < 2 or x.shape[0] % len(indices) != 0):
            raise ValueError(
                f"A stacked layout of {len(indices)} tasks {list(names)} needs a leading dimension "
                f"divisible by {len(indices)}; got input shape {tuple(x.shape[:-1])}."
            )
        return indices

    def _forward_low_rank(self, x: Tensor, indices: list[int]) -> Tensor:
        """``W x + b + s M_t A drop(x)``: shared ``A`` once, then one fused matmul-add."""
        result = self.base_layer(x)
        low = F.linear(lean_dropout(self.dropout, x), self.lora_a)  # N, ..., r
        # The scale goes into the small (T', out, r) matrices, so the big tensors are touched once.
        matrices = self.task_matrices()[indices] * self.scaling  # T', out, r
        return stacked_matmul_add(result, low, matrices)

    def _forward_merged_on_the_fly(self, x: Tensor, indices: list[int]) -> Tensor:
        """Inference: ``x_t (W + Delta W_t)^T + b`` per task block, as one batched matmul."""
        deltas = torch.matmul(self.task_matrices()[indices], self.lora_a)  # T', out, in
        weights = self.base_layer.weight + self.scaling * deltas  # T', out, in
        return stacked_linear(x, weights, self.base_layer.bias)

    def _forward_in_place_merged(self, x: Tensor, layout: TaskLayout) -> Tensor:
        """After :meth:`merge`, only single-task batches of the merged task can run.

        A one-task stacked layout (``("sal",)``, what a backbone sets for ``tasks=("sal",)``) is
        a single-task batch too.
        """
        if not isinstance(layout, (str, Tensor)) and len(layout) == 1:
            (layout,) = layout
        if isinstance(layout, str) and self.task_index(layout) == self.task_index(self.merged_task):
            return self.base_layer(x)
        raise RuntimeError(
            f"Task {self.merged_task!r} is merged into the weights, so only single-task "
            f"batches of it can run; call unmerge() first (got tasks={layout!r})."
        )

    def extra_repr(self) -> str:
        """Summarise the layer's sizes and options for ``repr``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha}, num_up={self.num_up}, temperature={self.temperature}, "
            f"diagonal={self.diagonal}, init={self.init!r}, tasks={list(self.tasks)}"
        )


def set_active_tasks(module: nn.Module, tasks: TaskLayout | None) -> int:
    """Set the task layout of every :class:`MTLLoRALinear` inside ``module``.

    Args:
        module: Any module (a backbone, a block, or a layer).
        tasks: Layout as in :meth:`MTLLoRALinear.forward`; ``None`` clears it.

    Returns:
        The number of layers updated.
    """
    layers = [m for m in module.modules() if isinstance(m, MTLLoRALinear)]
    for layer in layers:
        layer.set_active_tasks(tasks)
    return len(layers)
