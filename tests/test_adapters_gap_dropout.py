"""GapDropout: the distribution, scaling and gradient of nn.Dropout from geometric gaps."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from mtlora_vision.adapters.gap_dropout import GapDropout, bernoulli_positions


def test_positions_are_bernoulli_counts_and_gaps() -> None:
    torch.manual_seed(0)
    n, p = 200_000, 0.05
    counts = [len(bernoulli_positions(n, p)) for _ in range(40)]
    # Counts of a Binomial(n, p): mean n p, standard deviation sqrt(n p (1 - p)) = 97.5.
    assert abs(sum(counts) / 40 - n * p) < 4 * math.sqrt(n * p * (1 - p) / 40)
    assert stats.kstest(counts, stats.binom(n, p).cdf).pvalue > 1e-3
    positions = bernoulli_positions(n, p)
    assert positions.dtype == torch.int64
    assert positions.min() >= 0
    assert positions.max() < n
    assert bool((positions.diff() > 0).all())  # distinct, sorted
    # Each position is 1 independently: the per-position frequency over draws is p, also at
    # both ends (the first and last chunk boundaries).
    hits = torch.zeros(50)
    for _ in range(4000):
        hits[bernoulli_positions(50, 0.3)] += 1
    assert (hits / 4000 - 0.3).abs().max() < 4 * math.sqrt(0.3 * 0.7 / 4000)


def _positions_from_geometric(n: int, p: float) -> Tensor:
    """Second code path: partial sums of ``Tensor.geometric_`` gaps, drawn in the same chunks."""
    mean = n * p
    chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)
    parts, end = [torch.empty(0, dtype=torch.float64)], 0.0
    while end < n:
        positions = torch.empty(chunk, dtype=torch.float64).geometric_(p).cumsum(0) + end
        parts.append(positions)
        end = float(positions[-1])
    positions = torch.cat(parts)
    return (positions[positions <= n] - 1).long()


@pytest.mark.parametrize(
    ("n", "p"), [(1, 0.5), (7, 0.05), (1000, 0.5), (100_000, 0.9), (1_204_224, 0.05)]
)
def test_positions_equal_geometric_draws_and_leave_the_generator_in_step(n: int, p: float) -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        ours, after_ours = bernoulli_positions(n, p), torch.rand(4)
        torch.manual_seed(seed)
        reference, after_reference = _positions_from_geometric(n, p), torch.rand(4)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, reference)
        assert torch.equal(after_ours, after_reference)


def test_positions_of_an_empty_sequence_and_an_empty_input() -> None:
    assert bernoulli_positions(0, 0.1).shape == (0,)
    assert GapDropout(0.1).train()(torch.empty(0, 3)).shape == (0, 3)


def test_positions_reject_bad_probabilities() -> None:
    for p in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=f"p={p}"):
            bernoulli_positions(10, p)


def test_gap_dropout_scales_kept_elements_and_routes_gradients_through_the_mask() -> None:
    torch.manual_seed(1)
    layer = GapDropout(0.25).train()
    x = torch.randn(64, 33).t().requires_grad_()  # non-contiguous input
    state = torch.get_rng_state()
    out = layer(x)
    kept = out != 0
    for dtype in (torch.float32, torch.bfloat16):  # nn.Dropout's scale: 1 / (1 - p) in dtype
        scale = torch.ones((), dtype=dtype).div_(0.75)
        low = layer(x.detach().to(dtype))
        low_kept = low != 0
        torch.testing.assert_close(low[low_kept], x.detach().to(dtype)[low_kept] * scale,
                                   rtol=0, atol=0)  # fmt: skip
    torch.testing.assert_close(out[kept], x[kept] * (1 / 0.75), rtol=0, atol=0)
    assert 0.15 < 1 - kept.float().mean() < 0.35
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, kept.float() / 0.75, rtol=0, atol=0)
    torch.set_rng_state(state)  # the CPU generator's state decides the mask, as for nn.Dropout
    torch.testing.assert_close(layer(x), out, rtol=0, atol=0)


def test_gap_dropout_is_identity_in_eval_and_a_dropout_module() -> None:
    layer = GapDropout(0.5).eval()
    x = torch.randn(8, 4)
    assert torch.equal(layer(x), x)
    assert isinstance(layer, nn.Dropout)


def test_gap_dropout_keeps_only_the_dropped_indices_for_backward() -> None:
    torch.manual_seed(3)
    x = torch.randn(100, 100, requires_grad=True)
    saved: list[tuple[torch.dtype, int]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append((tensor.dtype, tensor.numel()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = GapDropout(0.05).train()(x)
    dropped = int((out == 0).sum())
    assert saved == [(torch.int64, dropped)]  # nn.Dropout saves a 10,000-element mask
    assert 0 < dropped < 1000
