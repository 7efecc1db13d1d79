"""The one strict state-dict check used by init_model, resume and the trainable-only loader."""

from __future__ import annotations

import pytest
import torch

from mtlora_vision.models.state_dict_check import (
    check_state_dict_fits,
    compare_state_dicts,
    head_tasks,
    listed,
)


def model_state() -> dict[str, torch.Tensor]:
    return {
        "backbone.w": torch.zeros(4, 2),
        "heads.semseg.w": torch.zeros(21, 8),
        "heads.sal.w": torch.zeros(1, 8),
    }


def test_compare_and_pure_helpers():
    given = {"backbone.w": torch.zeros(4, 3), "heads.sal.w": torch.zeros(1, 8), "x": torch.zeros(1)}
    missing, unexpected, mismatched = compare_state_dicts(model_state(), given)
    assert (missing, unexpected) == (["heads.semseg.w"], ["x"])
    assert mismatched == ["backbone.w: (4, 3) vs (4, 2)"]
    assert head_tasks(model_state()) == ["sal", "semseg"]
    assert listed(["a", "b", "c"], limit=2) == "['a', 'b'] ... (3 in total)"
    assert listed(["a"]) == "['a']"


def test_fitting_state_passes_and_errors_name_what_differs():
    check_state_dict_fits(model_state(), model_state())
    other_tasks = {k.replace("semseg", "normals"): v for k, v in model_state().items()}
    with pytest.raises(KeyError, match=r"heads for tasks \['normals', 'sal'\]; the model for"):
        check_state_dict_fits(model_state(), other_tasks, "Checkpoint 'a.pth'")
    other_rank = dict(model_state(), **{"backbone.w": torch.zeros(4, 5)})
    with pytest.raises(ValueError, match=r"'a.pth' shapes differ.*backbone\.w: \(4, 5\) vs"):
        check_state_dict_fits(model_state(), other_rank, "Checkpoint 'a.pth'")
