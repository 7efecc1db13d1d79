"""The batched rank-r products equal the plain products, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from live_tensors import LiveTensors

from mtlora_vision.adapters.lowrank_ops import (
    expand_gelu_project_down,
    expand_up,
    gelu_project_down,
    project_down,
)


def test_project_down_gradcheck_and_value() -> None:
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(project_down(x, w), torch.einsum("tmk,trk->tmr", x, w))
    assert torch.autograd.gradcheck(project_down, (x, w))


@pytest.mark.parametrize(
    ("dtype", "rank_major"),
    [(torch.float32, False), (torch.float64, False), (torch.bfloat16, True)],
)
def test_down_projections_are_laid_out_per_dtype(dtype, rank_major) -> None:
    # float32 (MKL) writes x @ w^T fastest, the half types (oneDNN) (w @ x^T)^T: the three
    # down-projections return that layout, with the plain product's values.
    base, c, f, w = factored_inputs(dtype, t=3, m=40, k=16, r=2)
    u = expand_up(base, c, f)
    plain = torch.einsum("tmk,trk->tmr", u.double(), w.double()).to(dtype)
    plain_gelu = torch.einsum("tmk,trk->tmr", F.gelu(u).double(), w.double()).to(dtype)
    outs = {
        "project_down": (project_down(u, w), plain),
        "gelu_project_down": (gelu_project_down(u, w), plain_gelu),
        "expand_gelu_project_down": (expand_gelu_project_down(base, c, f, w), plain_gelu),
    }
    tol = {"atol": 0.1, "rtol": 0.02} if dtype == torch.bfloat16 else {}
    for name, (out, expected) in outs.items():
        assert (out.stride(1) == 1) is rank_major, name
        torch.testing.assert_close(out, expected, **tol, msg=name)


def test_expand_up_gradcheck_and_value() -> None:
    base = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    expected = base + torch.einsum("tmr,tnr->tmn", c, f)
    torch.testing.assert_close(expand_up(base, c, f), expected)
    assert torch.autograd.gradcheck(expand_up, (base, c, f))


def test_non_contiguous_inputs() -> None:
    x = torch.randn(3, 5, 7).transpose(1, 2)  # (3, 7, 5) strided
    w = torch.randn(3, 2, 5)
    low = project_down(x, w)  # a transposed view
    f = torch.randn(3, 5, 2)
    base = torch.randn(5, 7).t()
    torch.testing.assert_close(expand_up(base, low, f), base + low @ f.transpose(1, 2))


@pytest.mark.parametrize("op", ["down", "up"])
def test_mixed_dtypes_under_autocast_keep_parameter_dtypes(op) -> None:
    # Under bf16 autocast activations are bf16 while adapter weights stay float32.
    w = torch.randn(3, 2, 5, requires_grad=True)
    x = torch.randn(3, 7, 5).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if op == "down":
            out = project_down(x, w)
        else:
            out = expand_up(torch.randn(7, 5).bfloat16(), x[..., :2], w.transpose(1, 2))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert w.grad.dtype == torch.float32
    assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_expand_up_sums_the_task_gradients_into_the_base(layout) -> None:
    # The base gradient is a product with a row of ones for a contiguous gradient, else sum(0).
    base = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 7, 5, dtype=torch.float64)
    if layout == "transposed":
        grad = torch.randn(3, 5, 7, dtype=torch.float64).transpose(1, 2)
    expand_up(base, c, f).backward(grad)
    torch.testing.assert_close(base.grad, grad[0] + grad[1] + grad[2])
    torch.testing.assert_close(c.grad, torch.einsum("tmn,tnr->tmr", grad, f))
    torch.testing.assert_close(f.grad, torch.einsum("tmn,tmr->tnr", grad, c))


def factored_inputs(dtype: torch.dtype, t: int = 3, m: int = 37, k: int = 16, r: int = 2):
    """base ``(m, k)``, c ``(t, m, r)``, f ``(t, k, r)``, w ``(t, 4, k)``, all requiring grad."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(m, k), (t, m, r), (t, k, r), (t, 4, k)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def test_expand_gelu_project_down_gradcheck_and_value() -> None:
    base, c, f, w = factored_inputs(torch.float64, m=7, k=5)
    u = base + torch.einsum("tmr,tkr->tmk", c, f)
    expected = torch.einsum("tmk,tsk->tms", F.gelu(u), w)
    torch.testing.assert_close(expand_gelu_project_down(base, c, f, w), expected)
    assert torch.autograd.gradcheck(expand_gelu_project_down, (base, c, f, w))
    tanh = expand_gelu_project_down(base, c, f, w, "tanh")
    expected = torch.einsum("tmk,tsk->tms", F.gelu(u, approximate="tanh"), w)
    torch.testing.assert_close(tanh, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expand_gelu_project_down_equals_the_expanded_path_bit_for_bit(dtype) -> None:
    # Slices of the same batched products, so the values and gradients of expand_up then
    # gelu_project_down to the last bit (the base gradient summed over tasks in task order).
    base, c, f, w = inputs = factored_inputs(dtype, t=4, m=300, k=64, r=4)
    fused = expand_gelu_project_down(base, c, f, w)
    plain = gelu_project_down(expand_up(base, c, f), w)
    assert torch.equal(fused, plain)
    grad = torch.randn_like(fused)
    got = torch.autograd.grad(fused, inputs, grad)
    expected = torch.autograd.grad(plain, inputs, grad)
    for name, g, e in zip(["base", "c", "f", "w"], got, expected, strict=True):
        assert torch.equal(g, e), name


def test_expand_gelu_project_down_saves_no_task_sized_tensor() -> None:
    base, c, f, w = factored_inputs(torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        expand_gelu_project_down(base, c, f, w)
    assert sorted(t.numel() for t in saved) == sorted(t.numel() for t in (base, c, f, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expand_gelu_project_down_holds_one_task_at_a_time(dtype) -> None:
    # The (M, K) task inputs and their gradients live in reused buffers: one in the forward
    # pass; in the backward pass the task input, its gradient and the base gradient (float32 for
    # bf16). Allocating a task's buffers while the previous task's were alive held two more.
    t, m, k = 4, 512, 256
    base, c, f, w = factored_inputs(torch.float32, t=t, m=m, k=k)
    base = base.detach().to(dtype).requires_grad_()
    one = m * k * base.element_size()  # bytes of one (M, K) buffer
    with LiveTensors() as forward:
        out = expand_gelu_project_down(base, c, f, w)
    out_bytes = out.numel() * out.element_size()
    small = 3 * 4 * (c.numel() + f.numel() + w.numel())  # thin factor copies and gradients
    assert one + out_bytes <= forward.peak <= one + out_bytes + small
    with LiveTensors() as backward:
        out.backward(torch.ones_like(out))
    grad_base = m * k * 4  # the task sum: float32 also for bf16
    assert backward.peak <= 2 * one + grad_base + small
    assert base.grad.dtype == dtype


def test_expand_gelu_project_down_under_bf16_autocast() -> None:
    # bf16 activations, float32 adapter weights: each gradient in its input's dtype, equal to the
    # expanded path's; the task sum of the base gradient is taken in float32 and rounded once.
    base, c, f, w = factored_inputs(torch.float32, t=4, m=64, k=32)
    half = [t.detach().bfloat16().requires_grad_() for t in (base, c)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = expand_gelu_project_down(*half, f, w)
        u = expand_up(*half, f)
        plain = gelu_project_down(u, w)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, plain)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (*half, f, w), grad)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 2 + [torch.float32] * 2
    plain_grads = torch.autograd.grad(plain, (u, half[1], f, w), grad)
    for name, got, expected in zip(["c", "f", "w"], grads[1:], plain_grads[1:], strict=True):
        assert torch.equal(got, expected), name
    task_grads = plain_grads[0]  # T, M, K in bf16
    total = task_grads[0].float()
    for task_grad in task_grads[1:]:
        total = total + task_grad.float()
    assert torch.equal(grads[0], total.bfloat16())
