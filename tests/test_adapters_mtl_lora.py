"""MTL-LoRA layer: initialisation, mixing, task layouts, per-task merge, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlora_vision.adapters.gap_dropout import GapDropout, bernoulli_positions
from mtlora_vision.adapters.mtl_lora import MTLLoRALinear, set_active_tasks
from mtlora_vision.adapters.mtl_lora_merge import (
    merge_task,
    set_merge_at_inference,
    task_merged_state_dict,
    unmerge_task,
)
from mtlora_vision.adapters.task_matmul import merging_pays_off
from mtlora_vision.tasks import Task

TASKS = ("semseg", "depth", "normals")
IN, OUT, RANK, NUM_UP = 6, 5, 3, 2
TOL = {"rtol": 1e-5, "atol": 1e-5}


def make_layer(
    diagonal: bool = False, init: str = "official", nonzero: bool = True, **kwargs: object
) -> MTLLoRALinear:
    """A small layer; with ``nonzero`` every adapter tensor is random so nothing is vacuous."""
    options = {"rank": RANK, "alpha": 6.0, "num_up": NUM_UP, "temperature": 0.7}
    options.update(kwargs)
    layer = MTLLoRALinear(nn.Linear(IN, OUT), TASKS, diagonal=diagonal, init=init, **options)
    if nonzero:
        with torch.no_grad():
            for param in (layer.lora_b, layer.lora_lambdas, layer.lora_mix_logits):
                param.normal_()
    return layer


def reference_delta(layer: MTLLoRALinear, x: torch.Tensor, task: int) -> torch.Tensor:
    """(alpha/r) * B~_t Lambda_t A x, written out in float64 from the parameters."""
    a = layer.lora_a.detach().double()
    b = layer.lora_b.detach().double()
    logits = layer.lora_mix_logits.detach().double()[task] / layer.temperature
    mix = torch.exp(logits) / torch.exp(logits).sum()
    b_task = sum(mix[i] * b[i] for i in range(b.shape[0]))
    lam = layer.lora_lambdas.detach().double()[task]
    lam = torch.diag(lam) if layer.diagonal else lam
    scale = layer.alpha / layer.rank
    return scale * (x.double() @ a.T @ lam.T @ b_task.T)


def reference_output(layer: MTLLoRALinear, x: torch.Tensor, task: int) -> torch.Tensor:
    """h = W x + b + (alpha/r) * B~_t Lambda_t A x in float64."""
    weight = layer.base_layer.weight.detach().double()
    bias = layer.base_layer.bias.detach().double()
    return x.double() @ weight.T + bias + reference_delta(layer, x, task)


@pytest.mark.parametrize("init", ["official", "adapters"])
@pytest.mark.parametrize("diagonal", [False, True])
def test_identity_at_init(init: str, diagonal: bool) -> None:
    layer = make_layer(diagonal=diagonal, init=init, nonzero=False)
    x = torch.randn(len(TASKS) * 2, 4, IN)
    base = layer.base_layer(x)
    assert torch.equal(layer(x, TASKS), base)
    assert torch.equal(layer(x, "depth"), base)
    assert torch.equal(layer(x, torch.tensor([2, 0, 1, 1, 0, 2])), base)
    for task in TASKS:
        assert torch.count_nonzero(layer.get_delta_weight(task)) == 0


def test_official_init_shapes_and_ranges() -> None:
    layer = make_layer(nonzero=False)
    num_tasks = len(TASKS)
    assert layer.lora_a.shape == (RANK, IN)
    assert layer.lora_lambdas.shape == (num_tasks, RANK, RANK)
    assert layer.lora_b.shape == (NUM_UP, OUT, RANK)
    assert layer.lora_mix_logits.shape == (num_tasks, NUM_UP)
    # kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert layer.lora_a.abs().max() <= 1 / math.sqrt(IN)
    assert layer.lora_mix_logits.abs().max() <= 1 / math.sqrt(NUM_UP)
    assert layer.lora_mix_logits.std() > 0  # random, not a uniform mix
    assert torch.equal(layer.lora_lambdas, torch.eye(RANK).expand(num_tasks, RANK, RANK))
    assert torch.count_nonzero(layer.lora_b) == 0
    diagonal = make_layer(diagonal=True, nonzero=False)
    assert diagonal.lora_lambdas.shape == (num_tasks, RANK)
    assert torch.equal(diagonal.lora_lambdas, torch.ones(num_tasks, RANK))
    assert torch.equal(diagonal.task_transforms(), torch.eye(RANK).expand(num_tasks, RANK, RANK))


def test_diagonal_default_follows_the_init() -> None:
    official = MTLLoRALinear(nn.Linear(IN, OUT), TASKS, rank=RANK)
    adapters = MTLLoRALinear(nn.Linear(IN, OUT), TASKS, rank=RANK, init="adapters")
    assert not official.diagonal
    assert official.lora_lambdas.shape == (len(TASKS), RANK, RANK)
    assert adapters.diagonal  # the library's "singular_values" default
    assert adapters.lora_lambdas.shape == (len(TASKS), RANK)
    full = MTLLoRALinear(nn.Linear(IN, OUT), TASKS, rank=RANK, init="adapters", diagonal=False)
    assert torch.equal(full.lora_lambdas, torch.ones(len(TASKS), RANK, RANK))


def test_adapters_library_init() -> None:
    layer = make_layer(init="adapters", nonzero=False)
    assert torch.equal(layer.lora_mix_logits, torch.ones(len(TASKS), NUM_UP))
    assert torch.equal(layer.lora_lambdas, torch.ones(len(TASKS), RANK, RANK))
    assert torch.linalg.matrix_rank(layer.lora_lambdas[0]) == 1
    assert torch.equal(layer.mixing_weights(), torch.full((len(TASKS), NUM_UP), 1 / NUM_UP))
    diagonal = make_layer(init="adapters", diagonal=True, nonzero=False)
    assert torch.equal(diagonal.lora_lambdas, torch.ones(len(TASKS), RANK))


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [(1.0, [[1 / 3, 2 / 3], [3 / 4, 1 / 4]]), (0.5, [[1 / 5, 4 / 5], [9 / 10, 1 / 10]])],
)
def test_mixing_weights_are_softmax_over_temperature(
    temperature: float, expected: list[list[float]]
) -> None:
    layer = MTLLoRALinear(nn.Linear(IN, OUT), ("a", "b"), rank=2, num_up=2, temperature=temperature)
    with torch.no_grad():
        layer.lora_mix_logits.copy_(torch.tensor([[0.0, math.log(2)], [math.log(3), 0.0]]))
    weights = layer.mixing_weights()
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_mixing_weights_stay_float32_for_bfloat16_layers() -> None:
    layer = MTLLoRALinear(nn.Linear(IN, OUT).to(torch.bfloat16), TASKS, rank=2, num_up=3)
    assert layer.lora_b.dtype == torch.bfloat16
    assert layer.mixing_weights().dtype == torch.float32
    assert layer.task_up_projections().dtype == torch.bfloat16


@pytest.mark.parametrize("diagonal", [False, True])
def test_single_task_forward_and_delta_match_formula(diagonal: bool) -> None:
    layer = make_layer(diagonal=diagonal, num_up=3)
    x = torch.randn(4, 7, IN)
    assert layer.task_transforms().shape == (len(TASKS), RANK, RANK)
    for index, task in enumerate(TASKS):
        expected = reference_output(layer, x, index)
        torch.testing.assert_close(layer(x, task).double(), expected, rtol=1e-5, atol=1e-5)
        delta = reference_delta(layer, torch.eye(IN), index)  # row i = Delta W e_i
        torch.testing.assert_close(
            layer.get_delta_weight(task).double(), delta.T, rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("shape", [(5, IN), (5, 4, IN), (5, 2, 3, IN)])
def test_stacked_forward_equals_per_task_loop(shape: tuple[int, ...]) -> None:
    layer = make_layer()
    batch = shape[0]
    x = torch.randn(len(TASKS) * batch, *shape[1:])
    stacked = layer(x, TASKS)
    assert stacked.shape == (*x.shape[:-1], OUT)
    for index, task in enumerate(TASKS):
        rows = slice(index * batch, (index + 1) * batch)
        torch.testing.assert_close(stacked[rows], layer(x[rows], task), rtol=1e-6, atol=1e-6)
        expected = reference_output(layer, x[rows], index)
        torch.testing.assert_close(stacked[rows].double(), expected, rtol=1e-5, atol=1e-5)


def test_subset_stack_and_per_row_ids_agree() -> None:
    layer = make_layer()
    x = torch.randn(2 * 3, 4, IN)
    subset = layer(x, ("normals", "semseg"))
    torch.testing.assert_close(subset[:3], layer(x[:3], "normals"), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(subset[3:], layer(x[3:], "semseg"), rtol=1e-6, atol=1e-6)
    ids = torch.tensor([2, 0, 1, 2, 0, 0])
    mixed = layer(x, ids)
    flat = layer(x[:, 0], ids)
    for row, index in enumerate(ids.tolist()):
        expected = layer(x[row : row + 1], TASKS[index])
        torch.testing.assert_close(mixed[row : row + 1], expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(flat[row], expected[0, 0], rtol=1e-6, atol=1e-6)


def test_active_tasks_drive_forward_without_arguments() -> None:
    model = nn.Sequential(make_layer(), nn.ReLU(), MTLLoRALinear(nn.Linear(OUT, 3), TASKS, rank=2))
    with torch.no_grad():
        model[2].lora_b.normal_()
    x = torch.randn(len(TASKS) * 2, IN)
    assert set_active_tasks(model, TASKS) == 2
    expected = model[2](torch.relu(model[0](x, TASKS)), TASKS)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    set_active_tasks(model, "depth")
    torch.testing.assert_close(model(x), model[2](torch.relu(model[0](x, "depth")), "depth"))
    set_active_tasks(model, None)
    with pytest.raises(ValueError, match="task layout"):
        model(x)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


def test_per_task_merge_equivalence() -> None:
    layer = make_layer().eval()
    x = torch.randn(8, 4, IN)
    original = layer.base_layer.weight.detach().clone()
    outputs = {task: layer(x, task).detach() for task in TASKS}
    for task in TASKS:
        merged = F.linear(x, layer.merged_weight(task), layer.base_layer.bias)
        assert relative_error(merged, outputs[task]) <= 1e-5
    assert outputs["semseg"].sub(outputs["depth"]).abs().max() > 1e-3  # tasks really differ

    layer.merge("depth")
    assert layer.merged
    assert relative_error(layer(x, "depth"), outputs["depth"]) <= 1e-5
    other = F.linear(x, layer.merged_weight("normals"), layer.base_layer.bias)
    assert relative_error(other, outputs["normals"]) <= 1e-5
    with pytest.raises(RuntimeError, match="unmerge"):
        layer(x, "semseg")
    with pytest.raises(RuntimeError, match="unmerge"):
        layer(x, TASKS)
    with pytest.raises(ValueError, match="unmerge"):
        layer.merge("semseg")
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, original, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x, "depth"), outputs["depth"], rtol=1e-5, atol=1e-6)


def test_merge_at_inference_matches_low_rank_path(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = make_layer()
    x = torch.randn(len(TASKS) * 4, 3, IN)
    inputs = {TASKS: x, ("normals", "semseg"): x[:8], "depth": x}
    expected = {layout: layer(rows, layout) for layout, rows in inputs.items()}
    bias = layer.base_layer.bias.detach().clone()
    model = nn.Sequential(layer, nn.Identity(), MTLLoRALinear(nn.Linear(OUT, 2), TASKS, rank=2))
    assert set_merge_at_inference(model, True) == 2

    def refuse(*args: object) -> None:
        raise AssertionError("low-rank path used")

    monkeypatch.setattr(MTLLoRALinear, "_forward_low_rank", refuse)
    with torch.no_grad():
        for layout, rows in inputs.items():
            assert relative_error(layer(rows, layout), expected[layout]) <= 1e-5
        layer.base_layer.bias = None
        assert relative_error(layer(x, TASKS), expected[TASKS] - bias) <= 1e-5
    with pytest.raises(AssertionError, match="low-rank path used"):
        layer(x, TASKS)  # autograd on: the low-rank path
    layer.train()
    layer.dropout = GapDropout(0.1)
    with torch.no_grad(), pytest.raises(AssertionError, match="low-rank path used"):
        layer(x, TASKS)  # active dropout: the low-rank path


def record_forward_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that gets the name of each stacked-layout path the layer takes (low rank, merged)."""
    used: list[str] = []
    for path in ("_forward_low_rank", "_forward_merged_on_the_fly"):
        original = getattr(MTLLoRALinear, path)

        def record(self, *args, _path=path, _original=original):
            used.append(_path)
            return _original(self, *args)

        monkeypatch.setattr(MTLLoRALinear, path, record)
    return used


def test_merge_at_inference_only_where_it_pays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # IN * OUT = 30 multiply-adds per rank to merge; M * (IN + OUT) = 11 M for the low-rank terms.
    assert not merging_pays_off(2, IN, OUT)
    assert merging_pays_off(3, IN, OUT)
    assert not merging_pays_off(7 * 7, 768, 3072)  # Swin-T stage-4 fc1 at 224 px, batch 1
    assert merging_pays_off(56 * 56, 96, 384)  # stage-1 fc1: 3136 tokens
    layer = make_layer().eval()
    set_merge_at_inference(layer, True)
    used = record_forward_paths(monkeypatch)
    small, large = torch.randn(len(TASKS) * 2, IN), torch.randn(len(TASKS) * 3, IN)
    with torch.no_grad():
        out_small, out_large = layer(small, TASKS), layer(large, TASKS)
    assert used == ["_forward_low_rank", "_forward_merged_on_the_fly"]
    for t in range(len(TASKS)):
        expected = reference_output(layer, small[2 * t : 2 * t + 2], t)
        torch.testing.assert_close(out_small[2 * t : 2 * t + 2].double(), expected, **TOL)
        expected = reference_output(layer, large[3 * t : 3 * t + 3], t)
        torch.testing.assert_close(out_large[3 * t : 3 * t + 3].double(), expected, **TOL)


def test_gradients_only_where_intended() -> None:
    layer = make_layer(nonzero=False)
    x = torch.randn(len(TASKS) * 2, 4, IN)
    layer(x, TASKS).square().sum().backward()
    assert layer.base_layer.weight.grad is None
    assert layer.base_layer.bias.grad is None
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    assert layer.lora_b.grad.abs().sum() > 0
    # B = 0 at step 0, so nothing upstream of B gets a gradient yet.
    for name in ("lora_a", "lora_lambdas", "lora_mix_logits"):
        assert torch.count_nonzero(getattr(layer, name).grad) == 0, name

    layer = make_layer()
    layer(x, TASKS).square().sum().backward()
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == set(MTLLoRALinear.adapter_names)
    for name in MTLLoRALinear.adapter_names:
        assert getattr(layer, name).grad.abs().sum() > 0, name


def test_gradient_reaches_only_the_rows_task() -> None:
    layer = make_layer()
    x = torch.randn(4, IN)
    layer(x, "normals").sum().backward()
    assert torch.count_nonzero(layer.lora_lambdas.grad[:2]) == 0
    assert torch.count_nonzero(layer.lora_mix_logits.grad[:2]) == 0
    assert layer.lora_lambdas.grad[2].abs().sum() > 0


def gap_dropout_reference(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x`` through the mask GapDropout draws after ``torch.manual_seed(seed)``, in float64."""
    torch.manual_seed(seed)
    keep = torch.ones(x.numel(), dtype=torch.bool)
    keep[bernoulli_positions(x.numel(), p)] = False
    return torch.where(keep.view(x.shape), x.double() / (1.0 - p), 0.0)


def test_dropout_applies_to_the_adapter_input_only() -> None:
    layer = make_layer(dropout=0.5)
    x = torch.randn(4, IN)
    torch.manual_seed(123)
    out = layer(x, "semseg")
    dropped = gap_dropout_reference(x, 0.5, seed=123)
    assert 0 < torch.count_nonzero(dropped) < x.numel()  # some dropped, some kept
    expected = layer.base_layer(x).double() + reference_delta(layer, dropped, 0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    eval_out = layer(x, "semseg").double()
    torch.testing.assert_close(eval_out, reference_output(layer, x, 0), rtol=1e-5, atol=1e-5)


def test_dropout_is_gap_dropout_and_the_output_uses_the_mask_it_drew() -> None:
    layer = make_layer(dropout=0.25)
    assert isinstance(layer.dropout, GapDropout)
    x = torch.randn(len(TASKS) * 2, 4, IN)
    assert layer.dropout.uses_gaps(x)  # training on the CPU: geometric gaps, not F.dropout
    seen: list[torch.Tensor] = []
    layer.dropout.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    torch.manual_seed(5)
    out = layer(x, TASKS).double()
    dropped = gap_dropout_reference(x, 0.25, seed=5)
    torch.testing.assert_close(seen[0].double(), dropped, **TOL)  # the mask it drew
    base = layer.base_layer(x).double()
    for t in range(len(TASKS)):
        rows = slice(2 * t, 2 * t + 2)
        expected = base[rows] + reference_delta(layer, dropped[rows], t)
        torch.testing.assert_close(out[rows], expected, **TOL)


def test_merge_at_inference_with_gap_dropout_only_when_it_is_inactive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = make_layer(dropout=0.25)
    set_merge_at_inference(layer, True)
    x = torch.randn(len(TASKS) * 3, IN)  # 3 rows per task: merging pays off
    used = record_forward_paths(monkeypatch)
    with torch.no_grad():
        out = layer.eval()(x, TASKS)
        layer.train()(x, TASKS)  # active dropout: the low-rank path
    assert used == ["_forward_merged_on_the_fly", "_forward_low_rank"]
    for t in range(len(TASKS)):
        expected = reference_output(layer, x[3 * t : 3 * t + 3], t)
        torch.testing.assert_close(out[3 * t : 3 * t + 3].double(), expected, **TOL)


def test_state_dict_round_trip() -> None:
    layer = make_layer(diagonal=True)
    state = layer.state_dict()
    assert set(state) == {
        "base_layer.weight",
        "base_layer.bias",
        "lora_a",
        "lora_lambdas",
        "lora_b",
        "lora_mix_logits",
    }
    torch.manual_seed(99)
    fresh = MTLLoRALinear(nn.Linear(IN, OUT), TASKS, rank=RANK, num_up=NUM_UP, diagonal=True)
    fresh.load_state_dict(state, strict=True)
    fresh.alpha, fresh.scaling, fresh.temperature = layer.alpha, layer.scaling, layer.temperature
    x = torch.randn(len(TASKS), IN)
    assert torch.equal(fresh(x, TASKS), layer(x, TASKS))
    two_tasks = MTLLoRALinear(nn.Linear(IN, OUT), TASKS[:2], rank=RANK, num_up=NUM_UP)
    with pytest.raises(RuntimeError, match="size mismatch"):
        two_tasks.load_state_dict(state)


def test_task_enum_members_are_accepted() -> None:
    layer = MTLLoRALinear(nn.Linear(IN, OUT), [Task.SEMSEG, Task.DEPTH], rank=2)
    assert layer.tasks == ("semseg", "depth")
    x = torch.randn(2, IN)
    assert torch.equal(layer(x, Task.DEPTH), layer(x, "depth"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": 2.5}, ValueError, "rank"),
        ({"num_up": 0}, ValueError, "num_up"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"init": "peft"}, ValueError, "init='peft'"),
        ({"tasks": ()}, ValueError, "at least one task"),
        ({"tasks": "semseg"}, ValueError, "single string"),
        ({"tasks": ("a", "a")}, ValueError, "Duplicate"),
        ({"base_layer": nn.Conv2d(3, 3, 1)}, TypeError, "Conv2d"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type[Exception], match: str) -> None:
    options = {"base_layer": nn.Linear(IN, OUT), "tasks": TASKS}
    options.update(kwargs)
    with pytest.raises(error, match=match):
        MTLLoRALinear(**options)


def test_bad_layouts_are_refused() -> None:
    layer = make_layer()
    x = torch.randn(4, IN)
    with pytest.raises(KeyError, match="'edge'"):
        layer(x, "edge")
    with pytest.raises(KeyError, match="'edge'"):
        layer(torch.randn(6, IN), ("semseg", "edge"))
    with pytest.raises(KeyError, match="'edge'"):
        layer.get_delta_weight("edge")
    with pytest.raises(ValueError, match="task layout"):
        layer(x)
    with pytest.raises(ValueError, match="divisible by 3"):
        layer(x, TASKS)
    with pytest.raises(KeyError, match="out of range"):
        layer(x, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="shape"):
        layer(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        layer(x, torch.zeros(4))


def test_merge_task_accepts_one_task_layouts_and_exports_plain_weights() -> None:
    second = MTLLoRALinear(nn.Linear(OUT, 3), TASKS, rank=2, alpha=4.0, num_up=2)
    model = nn.Sequential(make_layer(), nn.GELU(), second)
    with torch.no_grad():
        model[2].lora_b.normal_()
    x = torch.randn(4, 2, IN)
    set_active_tasks(model, ("normals",))  # a backbone's layout for tasks=("normals",)
    with torch.no_grad():
        expected = model(x)
        other = model[2](F.gelu(model[0](x, "semseg")), "semseg")
    plain = nn.Sequential(nn.Linear(IN, OUT), nn.GELU(), nn.Linear(OUT, 3))
    state = task_merged_state_dict(model, "normals")
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state, strict=True)
    assert relative_error(plain(x), expected) <= 1e-5
    assert relative_error(plain(x), other) > 1e-3  # another task's export would differ

    assert merge_task(model, "normals") == 2
    with torch.no_grad():
        assert relative_error(model(x), expected) <= 1e-5
        assert relative_error(model[0](x, ("normals",)), model[0](x, "normals")) == 0
    with pytest.raises(RuntimeError, match="unmerge"):
        model[0](x, ("normals", "semseg"))
    # the export is the same while merged in place
    merged_state = task_merged_state_dict(model, "semseg")
    torch.testing.assert_close(
        merged_state["0.weight"],
        model[0].base_layer.weight
        - model[0].get_delta_weight("normals")
        + model[0].get_delta_weight("semseg"),
    )
    assert unmerge_task(model) == 2
    assert not model[0].merged
    assert unmerge_task(model) == 0
