"""MTLoRALinear / LoRALinear: semantics of every mode against explicit formulas, merge, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlora_vision.adapters.merge import is_merged, merge_adapters, unmerge_adapters
from mtlora_vision.adapters.mtlora import MTLoRAFactors, MTLoRALinear, TaskCoefficients

TASKS = ("semseg", "sal", "normals")


def make_layer(mode: str = "matrix", **kwargs) -> MTLoRALinear:
    layer = MTLoRALinear(
        nn.Linear(6, 5),
        shared_rank=3,
        tasks=TASKS,
        task_rank=2,
        shared_scale=4.0,
        task_scale=2.0,
        mode=mode,
        **kwargs,
    )
    with torch.no_grad():  # non-zero B so that nothing below is vacuous
        for p in layer.parameters():
            if p.requires_grad and p.dim() == 2:
                p.normal_()
    return layer


def explicit_outputs(layer: MTLoRALinear, x: torch.Tensor, task_x: torch.Tensor | None):
    """docs/model.md#mtlora-layer written out with a Python loop over tasks (no dropout)."""
    W, b = layer.base_layer.weight, layer.base_layer.bias
    h = x @ W.T + b
    task_terms = []
    for i, t in enumerate(TASKS):
        u = x if task_x is None else task_x[i]
        task_terms.append(2.0 * (u @ layer.lora_tasks_a[t].T @ layer.lora_tasks_b[t].T))
    if layer.mode == "addition":
        tasks = [h + term for term in task_terms]
        return h + layer.lora_norm(sum(tasks)), tasks
    shared = h + 4.0 * (x @ layer.lora_shared_a.T @ layer.lora_shared_b.T)
    start = shared if layer.mode == "matrixv2" else h
    return shared, [start + term for term in task_terms]


def test_scale_is_not_divided_by_rank() -> None:
    base = nn.Linear(2, 1, bias=False)
    layer = MTLoRALinear(base, shared_rank=1, shared_scale=4.0)  # plain LoRA: no tasks
    with torch.no_grad():
        base.weight.zero_()
        layer.lora_shared_a.copy_(torch.tensor([[1.0, 2.0]]))
        layer.lora_shared_b.copy_(torch.tensor([[3.0]]))
    # 4 * 3 * (1 * 1 + 2 * 1) = 36, with no 1/rank factor.
    assert layer(torch.ones(1, 2)).item() == pytest.approx(36.0)
    assert torch.equal(layer.get_delta_weight(), torch.tensor([[12.0, 24.0]]))


@pytest.mark.parametrize("mode", ["matrix", "matrixv2", "addition"])
@pytest.mark.parametrize("with_task_input", [False, True])
def test_modes_match_explicit_formulas(mode: str, with_task_input: bool) -> None:
    layer = make_layer(mode)
    x = torch.randn(2, 4, 6)
    task_x = torch.randn(3, 2, 4, 6) if with_task_input else None
    out = layer.forward_tasks(x, task_x)
    shared, tasks = explicit_outputs(layer, x, task_x)
    torch.testing.assert_close(out.shared, shared)
    assert out.tasks.shape == (3, 2, 4, 5)
    for i in range(3):
        torch.testing.assert_close(out.tasks[i], tasks[i])
    if mode != "addition":
        torch.testing.assert_close(layer(x), shared)


def test_identity_at_initialisation() -> None:
    base = nn.Linear(6, 5)
    layer = MTLoRALinear(base, shared_rank=3, tasks=TASKS, task_rank=2, shared_scale=4.0)
    x, task_x = torch.randn(7, 6), torch.randn(3, 7, 6)
    out = layer.forward_tasks(x, task_x)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    torch.testing.assert_close(out.tasks, base(x).expand(3, -1, -1), rtol=0, atol=0)
    assert layer.lora_shared_a.abs().sum() > 0  # A is random, B is zero
    assert layer.lora_shared_b.abs().sum() == 0


def test_dropout_on_shared_input_only() -> None:
    layer = make_layer(dropout=0.5)
    layer.train()
    x, task_x = torch.randn(4, 6), torch.randn(3, 4, 6)
    torch.manual_seed(1)
    first = layer.forward_tasks(x, task_x)
    torch.manual_seed(2)
    second = layer.forward_tasks(x, task_x)
    # Task outputs read W x (no dropout) and the undropped task inputs: identical across draws.
    torch.testing.assert_close(first.tasks, second.tasks, rtol=0, atol=0)
    assert not torch.allclose(first.shared, second.shared)
    _, tasks = explicit_outputs(layer, x, task_x)
    torch.testing.assert_close(first.tasks[1], tasks[1])


@pytest.mark.parametrize("mode", ["matrix", "matrixv2"])
def test_merge_unmerge_round_trip(mode: str) -> None:
    layer = make_layer(mode).eval()
    weight = layer.base_layer.weight.detach().clone()
    x, task_x = torch.randn(5, 6), torch.randn(3, 5, 6)
    before, before_no_input = layer.forward_tasks(x, task_x), layer.forward_tasks(x)
    assert merge_adapters(layer) == 1
    assert is_merged(layer)
    torch.testing.assert_close(layer.base_layer.weight, weight + layer.get_delta_weight())
    after, after_no_input = layer.forward_tasks(x, task_x), layer.forward_tasks(x)
    for a, b in ((before, after), (before_no_input, after_no_input)):
        torch.testing.assert_close(a.shared, b.shared, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.tasks, b.tasks, rtol=1e-5, atol=1e-5)
    assert merge_adapters(layer) == 0  # merging twice does nothing
    assert unmerge_adapters(layer) == 1
    assert not is_merged(layer)
    torch.testing.assert_close(layer.base_layer.weight, weight, rtol=0, atol=1e-6)


def test_addition_mode_is_not_merged() -> None:
    layer = make_layer("addition")
    assert not layer.can_merge
    assert merge_adapters(layer) == 0
    with pytest.raises(KeyError, match="addition"):
        layer.get_delta_weight("shared")


def test_task_delta_weight_matches_formula() -> None:
    layer = make_layer()
    expected = 2.0 * layer.lora_tasks_b["sal"] @ layer.lora_tasks_a["sal"]
    torch.testing.assert_close(layer.get_delta_weight("sal"), expected)
    with pytest.raises(KeyError, match="depth"):
        layer.get_delta_weight("depth")


def test_trainable_scales_get_gradients_and_act() -> None:
    layer = make_layer(trainable_scale=True)
    names = {n for n, _ in layer.named_parameters()}
    assert {"lora_shared_scale", "lora_tasks_scale.sal"} <= names
    x = torch.randn(4, 6)
    out = layer.forward_tasks(x)
    (out.shared.sum() + out.tasks.sum()).backward()
    assert layer.lora_shared_scale.grad is not None
    assert layer.lora_shared_scale.grad != 0
    assert layer.lora_tasks_scale["normals"].grad != 0
    with torch.no_grad():
        layer.lora_tasks_scale["sal"].mul_(2.0)  # 2 -> 4
    low = x @ layer.lora_tasks_a["sal"].T @ layer.lora_tasks_b["sal"].T
    torch.testing.assert_close(layer.forward_tasks(x).tasks[1], layer.base_layer(x) + 4.0 * low)


def test_gradients_reach_adapters_not_base() -> None:
    layer = make_layer()
    out = layer.forward_tasks(torch.randn(3, 6), torch.randn(3, 3, 6))
    (out.shared.square().sum() + out.tasks.square().sum()).backward()
    assert layer.base_layer.weight.grad is None
    assert layer.base_layer.bias.grad is None
    assert all(p.grad is not None for n, p in layer.named_parameters() if n.startswith("lora_"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shared_rank": 0}, "shared_rank"),
        ({"shared_rank": 2, "tasks": ("a",), "task_rank": 0}, "task_rank"),
        ({"shared_rank": 2, "mode": "sum"}, "sum"),
        ({"shared_rank": 2, "mode": "addition"}, "addition"),
        ({"shared_rank": 2, "dropout": 1.5}, "dropout"),
        ({"shared_rank": 2, "tasks": ("a", "a")}, "Duplicate"),
    ],
)
def test_bad_settings_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MTLoRALinear(nn.Linear(4, 4), **kwargs)


def test_bad_inputs_raise() -> None:
    with pytest.raises(TypeError, match="Conv2d"):
        MTLoRALinear(nn.Conv2d(3, 3, 1), shared_rank=2)
    layer = make_layer()
    with pytest.raises(ValueError, match=r"\(3, 4, 6\)"):
        layer.forward_tasks(torch.randn(4, 6), torch.randn(2, 4, 6))
    factors = make_layer().forward_task_factors(torch.randn(4, 6))
    with pytest.raises(ValueError, match="needs task_gelu"):
        layer.forward_tasks(torch.randn(4, 6), factors)
    with pytest.raises(ValueError, match=r"\(3, 5, 6\)"):
        layer.forward_tasks(torch.randn(5, 6), factors, task_gelu="none")
    with pytest.raises(ValueError, match="plain LoRA"):
        MTLoRALinear(nn.Linear(4, 4), shared_rank=2).forward_tasks(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\(3, 5, 2\)"):  # the rank, not the width
        layer.forward_tasks(torch.randn(5, 6), TaskCoefficients(torch.randn(3, 5, 6)))
    with pytest.raises(ValueError, match="already projected"):
        layer.forward_tasks(torch.randn(5, 6), TaskCoefficients(torch.randn(3, 5, 2)), "none")


@pytest.mark.parametrize("mode", ["matrix", "matrixv2"])
def test_task_coefficients_stand_in_for_the_task_inputs(mode: str) -> None:
    # Given A_t u_t instead of u_t, the layer's outputs are the same.
    layer = make_layer(mode).double()
    x, task_x = torch.randn(5, 6, dtype=torch.float64), torch.randn(3, 5, 6, dtype=torch.float64)
    coeffs = torch.einsum("tmk,trk->tmr", task_x, layer.task_a())
    expected = layer.forward_tasks(x, task_x)
    got = layer.forward_tasks(x, TaskCoefficients(coeffs))
    torch.testing.assert_close(got.shared, expected.shared, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.tasks, expected.tasks, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["matrix", "matrixv2"])
def test_task_inputs_in_low_rank_form_give_the_expanded_results(mode: str) -> None:
    # A previous layer's factored task outputs through a GELU: the same outputs and gradients as
    # its expanded task outputs through the same GELU.
    first = make_layer(mode)
    second = MTLoRALinear(nn.Linear(5, 4), shared_rank=2, tasks=TASKS, task_rank=2, mode=mode)
    with torch.no_grad():
        for p in second.parameters():
            if p.requires_grad:
                p.normal_()
    x = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    first.double(), second.double()
    results = []
    for factored in (False, True):
        hidden = first.forward_task_factors(x) if factored else first.forward_tasks(x)
        assert isinstance(hidden, MTLoRAFactors) == factored
        task_in = hidden if factored else hidden.tasks
        out = second.forward_tasks(torch.nn.functional.gelu(hidden.shared), task_in, "none")
        params = [x, *(p for p in (*first.parameters(), *second.parameters()) if p.requires_grad)]
        loss = out.shared.sum() + (out.tasks * torch.arange(3.0).view(3, 1, 1, 1)).sum()
        results.append((out, torch.autograd.grad(loss, params)))
    (plain, plain_grads), (low, low_grads) = results
    torch.testing.assert_close(low.shared, plain.shared, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(low.tasks, plain.tasks, rtol=1e-12, atol=1e-12)
    for got, expected in zip(low_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
