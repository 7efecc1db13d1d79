"""MTLoRA linear layer: a frozen linear layer plus shared and task-specific low-rank updates.

MTLoRA: Low-Rank Adaptation Approach for Efficient Multi-Task Learning (Agiza, Neseem, Reda,
CVPR 2024). With ``h = W x + b`` the frozen projection of the shared input ``x``, ``x~`` the input
after dropout, ``x_t`` an optional input of task ``t`` and ``s``, ``s_t`` the scales (used as
given, not divided by the rank), the layer computes (``docs/model.md#mtlora-layer``):

* ``matrix`` (official default): shared ``y = h + s B A x~``; task ``y_t = h + s_t B_t A_t u_t``
  with ``u_t = x_t`` if given, else ``x~``. The task output has no shared term, and the frozen
  ``W`` always sees the shared input: only the low-rank term sees ``x_t`` (which gets no dropout).
* ``matrixv2``: as ``matrix`` but ``y_t = y + s_t B_t A_t u_t`` (the shared term included).
* ``addition``: no shared pair; ``y_t`` as in ``matrix`` and ``y = h + LayerNorm(sum_t y_t)``.

With no tasks the layer is plain LoRA (Hu et al., ICLR 2022; what ``LoRAConfig`` builds). ``A`` is
initialised with ``kaiming_uniform_(a=sqrt(5))`` and ``B`` with zeros, so a freshly wrapped layer
returns exactly the frozen layer's output.

The task terms are computed for all tasks at once: the task ``A`` matrices are stacked (and, when
the tasks share the input, concatenated with the shared ``A`` into one matmul), then one batched
matmul applies every task's ``B`` and adds the frozen output in the same call (``baddbmm``).
:meth:`MTLoRALinear.forward_task_factors` stops before that expansion and returns the task outputs
as ``base + coeffs @ factors.T``, for consumers that only need linear functions of them (the Swin
task branch at inference). Scales multiply ``B`` (``out x r``) or enter as a matmul's ``alpha``,
never the activations. Merging is documented in :mod:`mtlora_vision.adapters.merge`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_vision.adapters.config import AdapterSpec
from mtlora_vision.adapters.gap_dropout import GapDropout
from mtlora_vision.adapters.lowrank_ops import (
    expand_gelu_project_down,
    expand_up,
    project_down,
)
from mtlora_vision.recompute import lean_dropout


class MTLoRAOutput(NamedTuple):
    """Outputs of :meth:`MTLoRALinear.forward_tasks`.

    Attributes:
        shared: Shared output ``(..., out_features)``.
        tasks: Task outputs stacked in task order, ``(T, ..., out_features)``.
    """

    shared: Tensor
    tasks: Tensor


class MTLoRAFactors(NamedTuple):
    """Outputs of :meth:`MTLoRALinear.forward_task_factors`: task outputs kept low-rank.

    Task ``t``'s output is ``base + coeffs[t] @ factors[t].T``; consumers that only need linear
    functions of the task outputs never have to form the ``T`` full-width tensors.

    Attributes:
        shared: Shared output ``(..., out_features)``.
        base: What every task output starts from, ``(..., out_features)``: the frozen projection
            in ``matrix`` and ``addition`` mode, the shared output (the same tensor) in
            ``matrixv2``.
        coeffs: Task coefficients ``(T, ..., r_t)`` (``A_t u_t``).
        factors: Task up-projections with their scales, ``(T, out_features, r_t)`` (``s_t B_t``).
    """

    shared: Tensor
    base: Tensor
    coeffs: Tensor
    factors: Tensor


class TaskCoefficients(NamedTuple):
    """Task down-projections ``A_t u_t`` of task inputs, computed by the caller, ``(T, ..., r_t)``.

    Given as ``task_x`` to :meth:`MTLoRALinear.forward_task_factors` in place of the inputs
    ``u_t``, for callers that can form them without the ``T`` full-width inputs (the Swin task
    branch at inference projects LayerNorm outputs from their factors).
    """

    coeffs: Tensor


def expand_task_factors(base: Tensor, coeffs: Tensor, factors: Tensor) -> Tensor:
    """Task outputs ``base + coeffs[t] @ factors[t].T``, stacked ``(T, ..., out)``.

    Args:
        base: ``(..., out)``, shared by the tasks.
        coeffs: ``(T, ..., r)``.
        factors: ``(T, out, r)``.
    """
    T, r, out = coeffs.shape[0], coeffs.shape[-1], base.shape[-1]
    tasks = expand_up(base.reshape(-1, out), coeffs.reshape(T, -1, r), factors)  # T, M, out
    return tasks.view(T, *base.shape)


def _check_task_inputs(
    task_x: Tensor | MTLoRAFactors | TaskCoefficients | None,
    task_gelu: str | None,
    layer: MTLoRALinear,
    shape: torch.Size,
) -> None:
    """Raise ValueError unless ``task_x`` holds ``layer``'s task inputs for a shared ``shape``."""
    if task_x is None:
        return
    expected = (layer.num_tasks, *shape)
    if isinstance(task_x, MTLoRAFactors):
        if task_gelu is None:
            raise ValueError(
                "task_x given as MTLoRAFactors needs task_gelu: only the GELU-then-project path "
                "takes task inputs in low-rank form; pass the expanded (T, ..., in) inputs instead."
            )
        got = (task_x.coeffs.shape[0], *task_x.base.shape)
    elif isinstance(task_x, TaskCoefficients):
        if task_gelu is not None:
            raise ValueError(
                f"task_gelu={task_gelu!r} cannot apply to task inputs given as TaskCoefficients "
                "(already projected); pass the (T, ..., in) inputs instead."
            )
        got, expected = tuple(task_x.coeffs.shape), (*expected[:-1], layer.task_rank)
    else:
        got = tuple(task_x.shape)
    if got != expected:
        raise ValueError(
            f"task_x has shape {got}; expected {expected} (tasks {list(layer.task_names)} "
            "stacked in front of the shared input's shape, or its rank for TaskCoefficients)."
        )


class MTLoRALinear(nn.Module):
    """Frozen ``nn.Linear`` plus one shared and zero or more task-specific low-rank updates.

    Args:
        base_layer: Pretrained layer to wrap; its parameters are frozen here.
        shared_rank: Rank of the shared update.
        tasks: Names of the task-specific updates, in the order of the stacked outputs.
        task_rank: Rank of every task update.
        shared_scale: Factor on the shared update.
        task_scale: Factor on each task update.
        dropout: Dropout probability on the input of the low-rank branches.
        mode: ``"matrix"``, ``"matrixv2"`` or ``"addition"`` (module docstring).
        trainable_scale: Store the scales as trainable parameters.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        shared_rank: int,
        tasks: Sequence[str] = (),
        task_rank: int = 1,
        shared_scale: float = 1.0,
        task_scale: float = 1.0,
        dropout: float = 0.0,
        mode: str = "matrix",
        trainable_scale: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MTLoRALinear wraps nn.Linear, got {type(base_layer).__name__}.")
        # Validates ranks, scales, dropout, mode and task names in one place.
        spec = AdapterSpec(
            shared_rank=shared_rank,
            shared_scale=shared_scale,
            dropout=dropout,
            tasks=tuple(tasks),
            task_rank=task_rank,
            task_scale=task_scale,
            mode=mode,
            trainable_scale=trainable_scale,
        )
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.mode = spec.mode
        self.shared_rank = spec.shared_rank
        self.task_rank = spec.task_rank if spec.tasks else 0
        self.task_names: tuple[str, ...] = spec.tasks
        self.dropout = GapDropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.merged = False
        dd = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        if self.mode != "addition":
            self.lora_shared_a = nn.Parameter(torch.empty(self.shared_rank, self.in_features, **dd))
            self.lora_shared_b = nn.Parameter(
                torch.zeros(self.out_features, self.shared_rank, **dd)
            )
        self.lora_tasks_a = nn.ParameterDict(
            {
                t: nn.Parameter(torch.empty(self.task_rank, self.in_features, **dd))
                for t in spec.tasks
            }
        )
        self.lora_tasks_b = nn.ParameterDict(
            {
                t: nn.Parameter(torch.zeros(self.out_features, self.task_rank, **dd))
                for t in spec.tasks
            }
        )
        if self.mode == "addition":
            self.lora_norm = nn.LayerNorm(self.out_features, **dd)
        self._init_scales(spec, dd)
        self.reset_adapter_parameters()

    def _init_scales(self, spec: AdapterSpec, dd: dict) -> None:
        self.trainable_scale = spec.trainable_scale
        if spec.trainable_scale:
            self.lora_shared_scale = nn.Parameter(torch.tensor(spec.shared_scale, **dd))
            self.lora_tasks_scale = nn.ParameterDict(
                [(t, nn.Parameter(torch.tensor(spec.task_scale, **dd))) for t in spec.tasks]
            )
        else:
            self.shared_scale = spec.shared_scale
            self.task_scale = spec.task_scale

    def reset_adapter_parameters(self) -> None:
        """Kaiming-uniform ``A`` (as ``nn.Linear``), zero ``B``: the layer equals its base layer."""
        for a in self._a_params():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        for b in self._b_params():
            nn.init.zeros_(b)

    def _a_params(self) -> list[nn.Parameter]:
        shared = [self.lora_shared_a] if self.mode != "addition" else []
        return shared + [self.lora_tasks_a[t] for t in self.task_names]

    def _b_params(self) -> list[nn.Parameter]:
        shared = [self.lora_shared_b] if self.mode != "addition" else []
        return shared + [self.lora_tasks_b[t] for t in self.task_names]

    @property
    def num_tasks(self) -> int:
        """Number of task-specific updates."""
        return len(self.task_names)

    def extra_repr(self) -> str:
        """Sizes, mode, ranks, tasks and merge state, for ``print(model)``."""
        return (
            f"in={self.in_features}, out={self.out_features}, mode={self.mode}, "
            f"shared_rank={self.shared_rank}, tasks={list(self.task_names)}, "
            f"task_rank={self.task_rank}, merged={self.merged}"
        )

    # -- scales and stacked weights ---------------------------------------------------------------

    def scale(self, name: str = "shared") -> Tensor | float:
        """Current scale of the ``"shared"`` update or of a task's update."""
        if name != "shared" and name not in self.task_names:
            raise KeyError(f"No adapter {name!r}; this layer has 'shared' and {self.task_names}.")
        if self.trainable_scale:
            return self.lora_shared_scale if name == "shared" else self.lora_tasks_scale[name]
        return self.shared_scale if name == "shared" else self.task_scale

    def _scaled_shared_b(self) -> Tensor:
        return self.lora_shared_b * self.scale("shared")

    def _shared_b_alpha(self) -> tuple[Tensor, float]:
        """``B`` and the factor for the matmul's ``alpha`` (saves a multiply for fixed scales)."""
        if self.trainable_scale:
            return self._scaled_shared_b(), 1.0
        return self.lora_shared_b, self.shared_scale

    def task_a(self) -> Tensor:
        """Task down-projections stacked ``(T, r_t, in)`` (``A_t``)."""
        return torch.stack([self.lora_tasks_a[t] for t in self.task_names])

    def task_factors(self) -> Tensor:
        """Task up-projections times their scales, stacked ``(T, out, r_t)`` (``s_t B_t``)."""
        b = torch.stack([self.lora_tasks_b[t] for t in self.task_names])  # T, out, r_t
        if self.trainable_scale:
            scales = torch.stack([self.lora_tasks_scale[t] for t in self.task_names])
            return b * scales.view(-1, 1, 1)
        return b * self.task_scale

    def get_delta_weight(self, name: str = "shared") -> Tensor:
        """Return ``scale * B @ A`` of the ``"shared"`` update or of one task, ``(out, in)``.

        This is the single source for :meth:`merge` and :meth:`unmerge`.
        """
        if name == "shared":
            if self.mode == "addition":
                raise KeyError("mode='addition' has no shared low-rank pair.")
            return self._scaled_shared_b() @ self.lora_shared_a
        if name not in self.task_names:
            raise KeyError(f"No adapter {name!r}; this layer has 'shared' and {self.task_names}.")
        return (self.lora_tasks_b[name] * self.scale(name)) @ self.lora_tasks_a[name]

    # -- merging ---------------------------------------------------------------------------------

    @property
    def can_merge(self) -> bool:
        """Whether the shared update can be folded into the frozen weight (not in ``addition``)."""
        return self.mode != "addition"

    @torch.no_grad()
    def merge(self) -> bool:
        """Fold the shared update into ``base_layer.weight``; return whether anything was merged."""
        if self.merged or not self.can_merge:
            return False
        merged = self.base_layer.weight + self.get_delta_weight("shared")
        if not torch.isfinite(merged).all():
            raise ValueError(f"Merging gave non-finite weights in {self.extra_repr()}.")
        self.base_layer.weight.copy_(merged)
        self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> bool:
        """Subtract the shared update again; return whether anything was unmerged."""
        if not self.merged:
            return False
        self.base_layer.weight.sub_(self.get_delta_weight("shared"))
        self.merged = False
        return True

    # -- forward ---------------------------------------------------------------------------------

    def _shared_term(
        self, x: Tensor, base: Tensor, sign: float = 1.0, inplace: bool = False
    ) -> Tensor:
        """``base + sign * s B A x`` for flat ``x (M, in)`` and ``base (M, out)`` (fused add).

        ``inplace`` writes into ``base``; only for a fresh ``base`` that nothing else reads.
        """
        low = F.linear(x, self.lora_shared_a)  # M, r
        b, alpha = self._shared_b_alpha()
        add = base.addmm_ if inplace else base.addmm
        # .to(): under autocast ``low`` may be bf16 while B stays float32 (in-place ops don't cast).
        return add(low, b.t().to(low.dtype), alpha=sign * alpha)

    def forward(self, x: Tensor) -> Tensor:
        """Shared output only, a drop-in for the wrapped layer.

        Args:
            x: Input ``(..., in_features)``.

        Returns:
            ``(..., out_features)``.
        """
        if self.mode == "addition":
            return self.forward_tasks(x).shared
        if self.merged:
            return self.base_layer(x)
        flat = x.reshape(-1, self.in_features)
        dropped = lean_dropout(self.dropout, flat)
        out = self._shared_term(dropped, self.base_layer(flat), inplace=True)
        return out.view(*x.shape[:-1], self.out_features)

    def forward_tasks(
        self,
        x: Tensor,
        task_x: Tensor | MTLoRAFactors | TaskCoefficients | None = None,
        task_gelu: str | None = None,
    ) -> MTLoRAOutput:
        """Shared output and every task's output, the task outputs stacked.

        Args:
            x: Shared input ``(..., in_features)``.
            task_x: Optional task inputs ``(T, ..., in_features)`` in task order; without them
                every task's low-rank term reads the (dropped-out) shared input. They may also
                be the previous layer's :class:`MTLoRAFactors` (with ``task_gelu``): the task
                inputs ``base + coeffs[t] @ factors[t].T`` are then never formed whole; or
                their down-projections ``A_t u_t`` as :class:`TaskCoefficients`.
            task_gelu: GELU (its ``approximate``) applied to ``task_x`` first, never stored whole.

        Returns:
            ``shared (..., out)`` and ``tasks (T, ..., out)``.
        """
        parts = self.forward_task_factors(x, task_x, task_gelu)
        tasks = expand_task_factors(parts.base, parts.coeffs, parts.factors)
        shared = parts.shared
        if self.mode == "addition":
            shared = parts.base + self.lora_norm(tasks.sum(0))
        return MTLoRAOutput(shared, tasks)

    @property
    def shared_from_factors(self) -> bool:
        """Whether :meth:`forward_task_factors` gives the real shared output (not ``addition``).

        In ``addition`` mode the shared output normalises the sum of the expanded task outputs,
        so only :meth:`forward_tasks` gives it.
        """
        return self.mode != "addition"

    def forward_task_factors(
        self,
        x: Tensor,
        task_x: Tensor | MTLoRAFactors | TaskCoefficients | None = None,
        task_gelu: str | None = None,
    ) -> MTLoRAFactors:
        """Shared output, the task outputs' common base and their low-rank parts.

        Args:
            x: Shared input ``(..., in_features)``.
            task_x: Optional task inputs ``(T, ..., in_features)`` (see :meth:`forward_tasks`).
            task_gelu: Optional GELU applied to ``task_x`` first (see :meth:`forward_tasks`).

        Returns:
            The factors; in ``addition`` mode ``shared`` is the frozen projection (the LayerNorm
            of the task sum needs the expanded task outputs, see :meth:`forward_tasks`).
        """
        if not self.task_names:
            raise ValueError("forward_tasks needs task adapters; this layer is plain LoRA.")
        T = self.num_tasks
        _check_task_inputs(task_x, task_gelu, self, x.shape)
        flat = x.reshape(-1, self.in_features)  # M, in
        if task_x is not None:  # first, so that the shared path's tensors do not exist yet
            task_low = self._project_task_inputs(task_x, task_gelu)  # T, M, r_t
        base = self.base_layer(flat)  # M, out
        dropped = lean_dropout(self.dropout, flat)
        shared_low = None
        if task_x is None:
            if self.mode == "addition" or self.merged:
                task_low = F.linear(dropped, self.task_a().flatten(0, 1))
            else:
                # One matmul for the shared and all task down-projections of the same input.
                a_all = torch.cat([self.lora_shared_a, *self._a_params()[1:]])
                low = F.linear(dropped, a_all)  # M, r + T*r_t
                shared_low, task_low = low.split([self.shared_rank, T * self.task_rank], dim=-1)
            task_low = task_low.unflatten(-1, (T, self.task_rank)).transpose(0, 1)  # T, M, r_t
        shared, task_base = self._shared_and_task_base(flat, dropped, base, shared_low)
        lead = x.shape[:-1]
        shared_out = shared.view(*lead, self.out_features)
        # matrixv2: the very same tensor, so consumers can tell that base and shared coincide.
        base_out = shared_out if task_base is shared else task_base.view(*lead, self.out_features)
        return MTLoRAFactors(
            shared_out,
            base_out,
            task_low.reshape(T, *lead, self.task_rank),
            self.task_factors().to(task_low.dtype),
        )

    def _project_task_inputs(
        self, task_x: Tensor | MTLoRAFactors | TaskCoefficients, task_gelu: str | None
    ) -> Tensor:
        """The task down-projections ``(T, M, r_t)`` of given task inputs (after ``task_gelu``)."""
        T = self.num_tasks
        if isinstance(task_x, TaskCoefficients):
            return task_x.coeffs.reshape(T, -1, self.task_rank)
        if isinstance(task_x, MTLoRAFactors):
            r_in = task_x.coeffs.shape[-1]
            return expand_gelu_project_down(
                task_x.base.reshape(-1, self.in_features),
                task_x.coeffs.reshape(T, -1, r_in),
                task_x.factors,
                self.task_a(),
                task_gelu,
            )
        task_flat = task_x.reshape(T, -1, self.in_features)  # T, M, in
        return project_down(task_flat, self.task_a(), task_gelu)

    def _shared_and_task_base(
        self, flat: Tensor, dropped: Tensor, base: Tensor, shared_low: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Shared output and the term every task output starts from, both ``(M, out)``."""
        if self.mode == "addition":
            return base, base
        if self.merged:
            if self.mode == "matrixv2":
                return base, base
            # The task path applies the unmerged W: take the folded shared update out again.
            return base, self._shared_term(flat, base, sign=-1.0)
        if shared_low is None:
            shared = self._shared_term(dropped, base)
        else:
            b, alpha = self._shared_b_alpha()
            shared = torch.addmm(base, shared_low, b.t().to(shared_low.dtype), alpha=alpha)
        return shared, shared if self.mode == "matrixv2" else base

    @classmethod
    def from_spec(cls, base_layer: nn.Linear, spec: AdapterSpec) -> MTLoRALinear:
        """Wrap ``base_layer`` with the settings of ``spec`` (always an ``MTLoRALinear``)."""
        return MTLoRALinear(base_layer, **dataclasses.asdict(spec))
