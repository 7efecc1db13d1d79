"""The batched rank-r products equal the plain products, in value and gradient."""

from __future__ import annotations

import pytest
import torch

from mtlora_vision.adapters.lowrank_ops import expand_up, project_down


def test_project_down_gradcheck_and_value() -> None:
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(project_down(x, w), torch.einsum("tmk,trk->tmr", x, w))
    assert torch.autograd.gradcheck(project_down, (x, w))


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
