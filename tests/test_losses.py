"""Per-task losses against hand computations and the official formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlora_vision.models.losses import (
    MultiTaskLoss,
    balanced_bce_loss,
    cross_entropy_loss,
    depth_l1_loss,
    nonfinite_names,
    normals_l1_loss,
    stack_targets,
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_cross_entropy_averages_over_valid_pixels_only():
    # Pixel 0: logits (0, ln 3), label 1 -> -log(3/4). Pixel 1: ignored. Pixel 2: (0, 0), label 0.
    logits = torch.tensor([[0.0, 5.0, 0.0], [math.log(3.0), -2.0, 0.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[1, 255, 0]]])
    expected = (math.log(4 / 3) + math.log(2.0)) / 2
    assert cross_entropy_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_matches_torch_mean_over_non_ignored():
    logits = torch.randn(2, 5, 4, 3)
    target = torch.randint(0, 5, (2, 4, 3))
    target[0, :2] = 255
    reference = F.cross_entropy(logits, target, ignore_index=255)  # second code path
    torch.testing.assert_close(cross_entropy_loss(logits, target), reference)


def _official_balanced_bce(logits, labels, pos_weight=None):
    """The official HED formula, written out: x * (y - [x >= 0]) - log(1 + exp(x - 2x[x >= 0]))."""
    y = (labels >= 0.5).float()
    gt0 = (logits >= 0).float()
    val = logits * (y - gt0) - torch.log(1 + torch.exp(logits - 2 * logits * gt0))
    pos, neg = (-y * val).sum(), (-(1 - y) * val).sum()
    w = (1 - y).sum() / y.numel() if pos_weight is None else pos_weight
    return (w * pos + (1 - w) * neg) / y.numel()


def test_balanced_bce_hand_computed_with_ignored_pixel():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1, 0, 0, 255]).reshape(1, 2, 2)
    pos = _softplus(-2.0)  # -log sigmoid(2)
    neg = _softplus(-1.0) + _softplus(0.5)  # -log(1 - sigmoid(x))
    w = 2 / 3  # 2 negatives among 3 valid pixels
    expected = (w * pos + (1 - w) * neg) / 4  # divided by every pixel, as officially
    assert balanced_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    fixed = (0.95 * pos + 0.05 * neg) / 4
    edge = balanced_bce_loss(logits, target, pos_weight=0.95)
    assert edge.item() == pytest.approx(fixed, rel=1e-6)


@pytest.mark.parametrize("pos_weight", [None, 0.95])
def test_balanced_bce_matches_official_formula_without_voids(pos_weight):
    logits = torch.randn(2, 1, 5, 4) * 3
    target = torch.randint(0, 2, (2, 5, 4))
    expected = _official_balanced_bce(logits[:, 0], target.float(), pos_weight)
    torch.testing.assert_close(balanced_bce_loss(logits, target, pos_weight), expected)


def test_balanced_bce_is_stable_for_extreme_logits():
    logits = torch.tensor([200.0, -200.0, 200.0, -200.0]).reshape(1, 1, 1, 4)
    target = torch.tensor([[[1, 0, 0, 1]]])
    loss = balanced_bce_loss(logits, target)
    # Two pixels are right with ~0 loss; the wrong ones cost 200 each, with w = 1/2.
    assert loss.item() == pytest.approx((0.5 * 200 + 0.5 * 200) / 4, rel=1e-5)


def test_normals_l1_on_normalised_prediction_counts_all_channels():
    pred = torch.tensor([[3.0, 0.0, 7.0], [0.0, 2.0, 1.0], [4.0, 0.0, 0.0]]).reshape(1, 3, 1, 3)
    target = torch.tensor([[1.0, 0.0, 255.0], [0.0, 1.0, 255.0], [0.0, 0.0, 255.0]])
    target = target.reshape(1, 3, 1, 3)
    # Pixel 0: (3, 0, 4)/5 = (0.6, 0, 0.8) vs (1, 0, 0): 0.4 + 0 + 0.8. Pixel 1: (0, 1, 0) exact.
    expected = (0.4 + 0.8) / 6
    assert normals_l1_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_depth_l1_is_masked_mean():
    pred = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    target = torch.tensor([1.5, 255.0, 2.0]).reshape(1, 1, 1, 3)
    assert depth_l1_loss(pred, target).item() == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("fn", "channels", "target"),
    [
        (cross_entropy_loss, 7, torch.full((2, 3, 3), 255)),
        (balanced_bce_loss, 1, torch.full((2, 3, 3), 255)),
        (normals_l1_loss, 3, torch.full((2, 3, 3, 3), 255.0)),
        (depth_l1_loss, 1, torch.full((2, 1, 3, 3), 255.0)),
    ],
)
def test_all_ignored_batch_gives_exact_zero_with_zero_gradient(fn, channels, target):
    pred = torch.randn(2, channels, 3, 3, requires_grad=True)
    loss = fn(pred, target)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_losses_run_in_float32_under_low_precision_inputs():
    logits = torch.randn(1, 4, 2, 2).bfloat16()
    target = torch.randint(0, 4, (1, 2, 2))
    loss = cross_entropy_loss(logits, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), target))


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="resize the head output"):
        cross_entropy_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 2, 2, dtype=torch.long))


def test_multitask_loss_on_stacked_targets_matches_each_function():
    tasks = ("semseg", "human_parts", "sal", "normals", "edge")
    samples = []
    for _ in range(2):
        normals = F.normalize(torch.randn(3, 4, 4), dim=0)
        normals[:, 0] = 255.0
        samples.append(
            {
                "targets": {
                    "semseg": torch.randint(0, 21, (4, 4)),
                    "human_parts": torch.full((4, 4), 255),
                    "sal": torch.randint(0, 2, (4, 4)),
                    "normals": normals,
                    "edge": torch.randint(0, 2, (4, 4)),
                }
            }
        )
    targets = stack_targets(samples, tasks)
    assert targets["normals"].shape == (2, 3, 4, 4)
    outputs = {
        "semseg": torch.randn(2, 21, 4, 4),
        "human_parts": torch.randn(2, 7, 4, 4),
        "sal": torch.randn(2, 1, 4, 4),
        "normals": torch.randn(2, 3, 4, 4),
        "edge": torch.randn(2, 1, 4, 4),
    }
    losses = MultiTaskLoss(tasks)(outputs, targets)
    assert losses["human_parts"].item() == 0.0
    torch.testing.assert_close(
        losses["edge"], balanced_bce_loss(outputs["edge"], targets["edge"], pos_weight=0.95)
    )
    torch.testing.assert_close(losses["sal"], balanced_bce_loss(outputs["sal"], targets["sal"]))
    torch.testing.assert_close(
        losses["normals"], normals_l1_loss(outputs["normals"], targets["normals"])
    )
    with pytest.raises(KeyError, match="'depth'"):
        stack_targets(samples, ("depth",))
    with pytest.raises(KeyError, match="no 'edge' in the outputs"):
        MultiTaskLoss(tasks)({k: v for k, v in outputs.items() if k != "edge"}, targets)
    with pytest.raises(ValueError, match="Unknown task"):
        MultiTaskLoss(("semseg", "optical_flow"))


def test_nonfinite_names():
    values = {"a": torch.tensor(1.0), "b": torch.tensor(float("nan")), "c": float("inf"), "d": 2}
    assert nonfinite_names(values) == ["b", "c"]
