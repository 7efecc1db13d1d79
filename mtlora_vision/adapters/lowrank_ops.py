"""Batched rank-r products of the task adapters, with the matmul orientation chosen for speed.

Task adapters multiply ``(T, M, K)`` activations by per-task matrices where one side is the rank
(``r = 4``): the down-projection ``A_t u_t`` (``N = r``) and the up-projection ``B_t c_t``
(``K = r``). CPU BLAS speed on such thin batched products depends on the operands' layout, and
autograd's default backward of ``bmm``/``baddbmm`` lands on slow forms, so these two functions
have their own backward. Chosen by timing whole training steps of Swin-T MTLoRA r64 at 448x448
(batch 1, one thread, the tools' allocator tuning, steps interleaved in one process):

* the coefficient gradient of the up-projection is ``bmm(g, F)``, contiguous: the transposed form
  ``bmm(F^T, g^T)^T`` was 3x slower alone in float32 and handed the down-projection a transposed
  gradient (steps 0.972x in fp32, 0.985x in bf16 autocast; gradients bit-identical);
* the gradient of the shared base is ``ones(1, T) @ g`` rather than ``g.sum(0)`` (0.78x / 0.75x
  the time alone in fp32 / bf16);
* the down-projection's input gradient ``bmm(g, A)`` stays: its transposed form made the step
  1.13x slower (a transposed gradient downstream), and its weight gradient reduces over the long
  token axis as ``bmm(g^T, x)``;
* the down-projection itself depends on the dtype (:func:`_rank_major`): ``(A x^T)^T`` in the half
  types, ``x A^T`` in float32, where it is 1.4-3.6x faster alone at the task branches' shapes
  (MKL on an AMD EPYC without AMX; steps 0.94-0.99x, ``docs/speed.md``).

Values are those of the plain products (float rounding aside).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _ProjectDown(torch.autograd.Function):
    """``x @ w^T`` for ``x (T, M, K)`` and a thin ``w (T, r, K)``: ``(T, M, r)``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.w_dtype = w.dtype
        w = w.to(x.dtype)  # adapter weights may stay float32 under autocast
        ctx.save_for_backward(x, w)
        if _rank_major(x.dtype):
            return torch.bmm(w, x.transpose(1, 2)).transpose(1, 2)
        return torch.bmm(x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = torch.bmm(grad, w) if ctx.needs_input_grad[0] else None  # T, M, K
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad.transpose(1, 2), x).to(ctx.w_dtype)  # T, r, K
        return grad_x, grad_w


class _ExpandUp(torch.autograd.Function):
    """``base + c @ f^T`` for ``c (T, M, r)``, ``f (T, N, r)``, ``base (M, N)``: ``(T, M, N)``."""

    @staticmethod
    def forward(ctx, base: Tensor, c: Tensor, f: Tensor) -> Tensor:
        ctx.dtypes = (c.dtype, f.dtype)
        # A contiguous copy of the thin c (T x M x r): baddbmm was 2.5x slower alone with the
        # transposed c that project_down returns (training step 0.989x bf16, 0.995x fp32).
        c, f = c.to(base.dtype).contiguous(), f.to(base.dtype)
        ctx.save_for_backward(c, f)
        return torch.baddbmm(base.expand(c.shape[0], -1, -1), c, f.transpose(1, 2).contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        c, f = ctx.saved_tensors
        grad = grad.to(c.dtype)
        grad_base = _sum_tasks(grad) if ctx.needs_input_grad[0] else None
        grad_c = grad_f = None
        if ctx.needs_input_grad[1]:
            grad_c = torch.bmm(grad, f).to(ctx.dtypes[0])  # T, M, r
        if ctx.needs_input_grad[2]:
            grad_f = torch.bmm(c.transpose(1, 2), grad).transpose(1, 2).to(ctx.dtypes[1])
        return grad_base, grad_c, grad_f


def _sum_tasks(grad: Tensor) -> Tensor:
    """``grad.sum(0)`` of ``(T, M, N)``; as ``ones(1, T) @ grad`` when contiguous (faster here)."""
    if not grad.is_contiguous():
        return grad.sum(0)
    T = grad.shape[0]
    return torch.mm(grad.new_ones(1, T), grad.view(T, -1)).view(grad.shape[1:])


def project_down(x: Tensor, w: Tensor, gelu: str | None = None) -> Tensor:
    """Per-task down-projection ``x[t] @ w[t]^T``, or ``gelu(x[t]) @ w[t]^T``.

    Args:
        x: Task inputs ``(T, M, K)``.
        w: Per-task ``A`` matrices ``(T, r, K)``.
        gelu: None, or the ``approximate`` of a GELU applied to ``x`` first, fused with the
            projection (:func:`gelu_project_down`: the GELU output is never stored whole).

    Returns:
        ``(T, M, r)``.
    """
    if gelu is not None:
        return gelu_project_down(x, w, gelu)
    return _ProjectDown.apply(x, w)


def expand_up(base: Tensor, c: Tensor, f: Tensor) -> Tensor:
    """Per-task ``base + c[t] @ f[t]^T`` with ``base`` shared by the tasks.

    Args:
        base: ``(M, N)``.
        c: Coefficients ``(T, M, r)``.
        f: Per-task up-projections ``(T, N, r)``.

    Returns:
        ``(T, M, N)``.
    """
    return _ExpandUp.apply(base, c, f)


class _GeluProjectDown(torch.autograd.Function):
    """``gelu(u) @ w^T`` per task, saving ``u`` only: the GELU output is recomputed in backward.

    One task at a time, so the GELU output exists for one task's ``(M, K)`` at a time; the
    products reduce over the whole of ``K`` (forward) and ``M`` (weight gradient) in one call
    each, as ``project_down(F.gelu(u), w)`` does, so values and gradients equal that path's (bit
    for bit on this CPU, tested).
    """

    @staticmethod
    def forward(ctx, u: Tensor, w: Tensor, approximate: str) -> Tensor:
        ctx.w_dtype, ctx.approximate = w.dtype, approximate
        w = w.to(u.dtype)
        ctx.save_for_backward(u, w)
        out = _down_output(u, u.shape[0], u.shape[1], w.shape[1])
        for t in range(u.shape[0]):
            _project_into(F.gelu(u[t], approximate=approximate), w[t], out[t])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        u, w = ctx.saved_tensors
        grad = grad.to(u.dtype)
        grad_u = torch.empty_like(u) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        for t in range(u.shape[0]):
            if grad_w is not None:
                h = F.gelu(u[t], approximate=ctx.approximate)
                torch.mm(grad[t].t(), h, out=grad_w[t])
            if grad_u is not None:
                torch.ops.aten.gelu_backward.grad_input(
                    grad[t] @ w[t], u[t], approximate=ctx.approximate, grad_input=grad_u[t]
                )
        return grad_u, None if grad_w is None else grad_w.to(ctx.w_dtype), None


def gelu_project_down(u: Tensor, w: Tensor, approximate: str = "none") -> Tensor:
    """Per-task ``gelu(u[t]) @ w[t]^T`` without storing ``gelu(u)`` (recomputed in backward).

    Args:
        u: GELU inputs ``(T, M, K)``.
        w: Per-task ``A`` matrices ``(T, r, K)``.
        approximate: ``F.gelu``'s ``approximate``.

    Returns:
        ``(T, M, r)``, the values of ``project_down(F.gelu(u), w)``.
    """
    return _GeluProjectDown.apply(u, w, approximate)


class _ExpandGeluProjectDown(torch.autograd.Function):
    """``gelu(base + c[t] @ f[t]^T) @ w[t]^T`` per task, never holding the ``T`` task inputs.

    Each task's input ``u_t = base + c[t] @ f[t]^T`` (``(M, K)``) is formed, used and dropped one
    task at a time, in the forward pass and again in the backward pass; only ``base``, the thin
    ``c``, ``f``, ``w`` are saved. Against ``expand_up`` then ``gelu_project_down`` this saves the
    ``(T, M, K)`` input and, in the backward pass, its ``(T, M, K)`` gradient, for one more rank-r
    product per task.
    """

    @staticmethod
    def forward(ctx, base: Tensor, c: Tensor, f: Tensor, w: Tensor, approximate: str) -> Tensor:
        ctx.dtypes, ctx.approximate = (c.dtype, f.dtype, w.dtype), approximate
        # The orientations expand_up and gelu_project_down use, so the products are theirs.
        c, f, w = c.to(base.dtype).contiguous(), f.to(base.dtype), w.to(base.dtype)
        f_t = f.transpose(1, 2).contiguous()  # T, r, K
        ctx.save_for_backward(base, c, f, w)
        out = _down_output(base, c.shape[0], base.shape[0], w.shape[1])
        h = torch.empty_like(base)  # one task's input at a time, in one buffer
        for t in range(c.shape[0]):
            torch.ops.aten.gelu_(_task_input(base, c, f_t, t, out=h), approximate=approximate)
            _project_into(h, w[t], out[t])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        base, c, f, w = ctx.saved_tensors
        f_t = f.transpose(1, 2).contiguous()  # T, r, K
        grad = grad.to(base.dtype)
        need_base, need_c, need_f, need_w = ctx.needs_input_grad[:4]
        # The task sum of the base's gradient, in float32 for half types and rounded once at the
        # end (expand_up's bf16 matmul sum can be one unit in the last place off that).
        acc_dtype = _accumulation_dtype(base.dtype)
        grad_base = None
        grad_c = torch.empty_like(c) if need_c else None
        grad_f = torch.empty_like(f, memory_format=torch.contiguous_format) if need_f else None
        grad_w = torch.empty_like(w) if need_w else None
        # One task at a time in two (M, K) buffers, reused, so that no task's buffers outlive it.
        u = torch.empty_like(base)
        grad_u = torch.empty_like(base) if need_base or need_c or need_f else None
        for t in range(c.shape[0]):
            _task_input(base, c, f_t, t, out=u)  # M, K
            if grad_u is not None:
                torch.mm(grad[t], w[t], out=grad_u)  # the GELU's backward in place below
                torch.ops.aten.gelu_backward.grad_input(
                    grad_u, u, approximate=ctx.approximate, grad_input=grad_u
                )
                one = grad_u.unsqueeze(0)  # slices of expand_up's batched products: same values
                if need_c:
                    torch.bmm(one, f[t : t + 1], out=grad_c[t : t + 1])  # M, r
                if need_f:
                    grad_f[t] = torch.bmm(c[t : t + 1].transpose(1, 2), one)[0].t()  # K, r
                if need_base and grad_base is None:
                    # The first task's gradient starts the sum: a float32 copy for half types,
                    # else the buffer itself, which the next task then must not overwrite.
                    grad_base = grad_u.to(acc_dtype)
                    if grad_base is grad_u and t + 1 < c.shape[0]:
                        grad_u = torch.empty_like(base)
                elif need_base:
                    grad_base.add_(grad_u)
            if need_w:
                torch.ops.aten.gelu_(u, approximate=ctx.approximate)  # u is not needed again
                torch.mm(grad[t].t(), u, out=grad_w[t])
        del u, grad_u  # freed before the base gradient's cast below
        if grad_base is not None:
            grad_base = grad_base.to(base.dtype)
        c_dtype, f_dtype, w_dtype = ctx.dtypes
        return (
            grad_base,
            None if grad_c is None else grad_c.to(c_dtype),
            None if grad_f is None else grad_f.to(f_dtype),
            None if grad_w is None else grad_w.to(w_dtype),
            None,
        )


def _rank_major(dtype: torch.dtype) -> bool:
    """Whether thin down-projections ``x @ w^T`` run fastest as ``(w @ x^T)^T`` in ``dtype``.

    The half types (oneDNN on the CPU): yes, up to 1.5x faster at most of the task branches'
    shapes, alone (0.75x at one). float32 (MKL): no, ``x @ w^T`` is 1.4-3.6x faster there for more
    than about 1000 rows.
    """
    return dtype in (torch.bfloat16, torch.float16)


def _down_output(like: Tensor, tasks: int, rows: int, rank: int) -> Tensor:
    """Empty ``(T, M, r)`` for thin down-projections, laid out as :func:`_project_into` writes it.

    Rank-major (a transposed view of ``(T, r, M)``) where :func:`_rank_major` says so.
    """
    if _rank_major(like.dtype):
        return like.new_empty(tasks, rank, rows).transpose(1, 2)
    return like.new_empty(tasks, rows, rank)


def _project_into(x: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """``x @ w^T`` for ``x (M, K)``, ``w (r, K)`` into ``out (M, r)``, from :func:`_down_output`."""
    if out.stride(-1) == 1:
        return torch.mm(x, w.t(), out=out)
    torch.mm(w, x.t(), out=out.t())
    return out


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the half types, else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _task_input(base: Tensor, c: Tensor, f_t: Tensor, t: int, out: Tensor) -> Tensor:
    """``base + c[t] @ f_t[t]`` into ``out (M, K)``, a slice of ``expand_up``'s batched product."""
    torch.baddbmm(base.unsqueeze(0), c[t : t + 1], f_t[t : t + 1], out=out.unsqueeze(0))
    return out


def expand_gelu_project_down(
    base: Tensor, c: Tensor, f: Tensor, w: Tensor, approximate: str = "none"
) -> Tensor:
    """Per-task ``gelu(base + c[t] @ f[t]^T) @ w[t]^T``, the task inputs never stored whole.

    The values of ``gelu_project_down(expand_up(base, c, f), w, approximate)``: a layer's task
    outputs in low-rank form (:class:`~mtlora_vision.adapters.mtlora.MTLoRAFactors`) fed through
    a GELU into the next layer's task down-projections, without the ``(T, M, K)`` tensors.

    Args:
        base: Shared part of the task inputs ``(M, K)``.
        c: Task coefficients ``(T, M, r)``.
        f: Task up-projections ``(T, K, r)``.
        w: Per-task ``A`` matrices of the next layer ``(T, r', K)``.
        approximate: ``F.gelu``'s ``approximate``.

    Returns:
        ``(T, M, r')``.
    """
    return _ExpandGeluProjectDown.apply(base, c, f, w, approximate)
