"""Loss weighting schemes: fixed, uncertainty (Kendall 2018) and DWA (Liu 2019)."""

from __future__ import annotations

import math

import pytest
import torch
from mmengine.model import BaseModel

from mtlora_vision.models.loss_weighting import (
    OFFICIAL_LOSS_WEIGHTS,
    DynamicWeightAverage,
    FixedWeighting,
    UncertaintyWeighting,
    dwa_weights,
)
from mtlora_vision.models.losses import NonFiniteLossError

PASCAL = ("semseg", "human_parts", "sal", "normals", "edge")


class _ParseOnly(BaseModel):
    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise NotImplementedError


def _losses(values):
    return {t: torch.tensor(float(v), requires_grad=True) for t, v in values.items()}


def test_official_weights_and_mmengine_sums_only_loss_terms():
    assert dict(OFFICIAL_LOSS_WEIGHTS) == {
        "semseg": 1.0,
        "human_parts": 2.0,
        "sal": 5.0,
        "normals": 10.0,
        "edge": 50.0,
        "depth": 1.0,
    }
    raw = dict(zip(PASCAL, (0.5, 0.25, 0.125, 0.1, 0.01), strict=True))
    out = FixedWeighting(PASCAL)(_losses(raw))
    assert set(out) == {f"loss_{t}" for t in PASCAL} | {f"raw_{t}" for t in PASCAL}
    assert out["loss_sal"].item() == pytest.approx(5 * 0.125)
    assert out["raw_edge"].item() == pytest.approx(0.01)
    assert not out["raw_semseg"].requires_grad
    total, log_vars = _ParseOnly().parse_losses(out)
    expected = 0.5 * 1 + 0.25 * 2 + 0.125 * 5 + 0.1 * 10 + 0.01 * 50
    assert total.item() == pytest.approx(expected)
    assert log_vars["raw_normals"].item() == pytest.approx(0.1)


def test_fixed_weighting_custom_weights_and_errors():
    out = FixedWeighting(("semseg", "depth"), weights={"semseg": 2.0, "depth": 3.0, "sal": 9.0})(
        _losses({"semseg": 1.0, "depth": 1.0})
    )
    assert (out["loss_semseg"].item(), out["loss_depth"].item()) == (2.0, 3.0)
    with pytest.raises(KeyError, match="no weight for task"):
        FixedWeighting(("semseg", "depth"), weights={"semseg": 1.0})
    with pytest.raises(KeyError, match="No loss for task"):
        FixedWeighting(("semseg", "sal"))(_losses({"semseg": 1.0}))


def test_nonfinite_raw_loss_is_refused_naming_the_task():
    weighting = FixedWeighting(("semseg", "sal"))
    with pytest.raises(NonFiniteLossError, match=r"\['sal'\].*sal=nan"):
        weighting(_losses({"semseg": 1.0, "sal": float("nan")}))
    unchecked = FixedWeighting(("semseg", "sal"), check_finite=False)
    assert math.isnan(unchecked(_losses({"semseg": 1.0, "sal": float("nan")}))["loss_sal"].item())


def test_zero_loss_task_contributes_exact_zero_in_every_scheme():
    for weighting in (
        FixedWeighting(PASCAL),
        UncertaintyWeighting(PASCAL, init_log_variance=0.3),
        DynamicWeightAverage(PASCAL, window=1),
    ):
        losses = _losses(dict.fromkeys(PASCAL, 1.0) | {"human_parts": 0.0})
        out = weighting(losses)
        assert out["loss_human_parts"].item() == 0.0
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        assert losses["human_parts"].grad is not None
        params = list(weighting.parameters())
        assert all(torch.isfinite(p.grad).all() for p in params)
        if params:  # the regulariser alone must not move a task without data
            assert weighting.log_variances["human_parts"].grad.item() == 0.0


def test_uncertainty_weighting_formula_and_gradient():
    weighting = UncertaintyWeighting(("semseg", "sal"))
    with torch.no_grad():
        weighting.log_variances["sal"].fill_(math.log(2.0))
    out = weighting(_losses({"semseg": 3.0, "sal": 4.0}))
    assert out["weight_sal"].item() == pytest.approx(0.25)  # 0.5 * exp(-ln 2)
    assert out["loss_sal"].item() == pytest.approx(0.25 * 4 + 0.5 * math.log(2.0))
    assert out["loss_semseg"].item() == pytest.approx(0.5 * 3)
    out["loss_semseg"].backward()
    # d/ds [0.5 e^-s L + 0.5 s] at s = 0, L = 3: -1.5 + 0.5
    assert weighting.log_variances["semseg"].grad.item() == pytest.approx(-1.0)


def test_uncertainty_log_variances_are_trained_to_log_of_the_loss():
    weighting = UncertaintyWeighting(("semseg", "sal"))
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(400):
        out = weighting(_losses({"semseg": 4.0, "sal": 0.5}))
        optimizer.zero_grad()
        (out["loss_semseg"] + out["loss_sal"]).backward()
        optimizer.step()
    # The minimum of 0.5 e^-s L + 0.5 s is at s = ln L.
    assert weighting.log_variances["semseg"].item() == pytest.approx(math.log(4.0), abs=1e-2)
    assert weighting.log_variances["sal"].item() == pytest.approx(math.log(0.5), abs=1e-2)


def test_dwa_weights_pure_function():
    last = torch.tensor([2.0, 2.0], dtype=torch.float64)
    before = torch.tensor([1.0, 2.0], dtype=torch.float64)
    e1, e2 = math.exp(2.0 / 2), math.exp(1.0 / 2)
    expected = [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]
    assert dwa_weights(last, before, 2.0).tolist() == pytest.approx(expected)
    assert dwa_weights(before, before).tolist() == pytest.approx([1.0, 1.0])
    zero = dwa_weights(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert zero.sum().item() == pytest.approx(2.0)
    assert zero[0].item() < 1.0  # r = (1, 3): the zero task counts as unchanged


def test_dwa_per_iteration_windows_follow_the_paper():
    dwa = DynamicWeightAverage(("semseg", "sal"), temperature=2.0, window=2)
    steps = [(1.0, 4.0), (3.0, 4.0), (4.0, 2.0), (4.0, 6.0), (1.0, 1.0)]
    weights = [dwa(_losses({"semseg": a, "sal": b})) for a, b in steps]
    for out in weights[:4]:  # windows 1 and 2 are still open or just closed: weight 1
        assert (out["weight_semseg"].item(), out["weight_sal"].item()) == (1.0, 1.0)
    # Window means: (2, 4) then (4, 4); ratios (2, 1).
    e1, e2 = math.exp(2.0 / 2), math.exp(1.0 / 2)
    assert weights[4]["weight_semseg"].item() == pytest.approx(2 * e1 / (e1 + e2))
    assert weights[4]["loss_sal"].item() == pytest.approx(2 * e2 / (e1 + e2) * 1.0)
    assert int(dwa.num_windows) == 2


def test_dwa_epoch_windows_eval_mode_and_state_dict_resume():
    dwa = DynamicWeightAverage(("semseg", "sal"))
    for epoch_losses in ([(1.0, 2.0), (3.0, 2.0)], [(2.0, 0.0), (2.0, 1.0)]):
        for a, b in epoch_losses:
            dwa(_losses({"semseg": a, "sal": b}))
        dwa.close_window()
    # Epoch means (2, 2) then (2, 1): the zero of sal is skipped, not averaged in.
    assert dwa.history.tolist() == [[2.0, 2.0], [2.0, 1.0]]
    dwa.eval()
    dwa(_losses({"semseg": 100.0, "sal": 100.0}))
    assert int(dwa.window_steps) == 0  # evaluation does not feed the statistics
    restored = DynamicWeightAverage(("semseg", "sal"))
    restored.load_state_dict(dwa.state_dict())
    torch.testing.assert_close(restored.current_weights(), dwa.current_weights())
    torch.testing.assert_close(dwa.current_weights(), dwa_weights(dwa.history[1], dwa.history[0]))


def test_dwa_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(("semseg",), temperature=0)
    with pytest.raises(ValueError, match="window"):
        DynamicWeightAverage(("semseg",), window=0)
