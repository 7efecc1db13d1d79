"""multitask_collate: inputs stacked, per-sample targets kept, also with mixed target sizes."""

from __future__ import annotations

import pytest
import torch

from mtlora_vision.datasets.collate import multitask_collate


def _sample(image_id, target_hw, input_hw=(8, 8)):
    return {
        "inputs": torch.full((3, *input_hw), float(len(image_id))),
        "data_samples": {
            "id": image_id,
            "ori_shape": target_hw,
            "img_shape": input_hw,
            "targets": {"semseg": torch.zeros(target_hw, dtype=torch.int64)},
        },
    }


def test_mixed_target_sizes_keep_their_own_sizes():
    batch = multitask_collate([_sample("a", (5, 7)), _sample("bb", (9, 4))])
    assert batch["inputs"].shape == (2, 3, 8, 8)
    assert batch["inputs"][1, 0, 0, 0] == 2.0
    assert [s["id"] for s in batch["data_samples"]] == ["a", "bb"]
    assert batch["data_samples"][1]["targets"]["semseg"].shape == (9, 4)


def test_inputs_of_different_sizes_and_empty_batches_are_errors():
    with pytest.raises(ValueError, match=r"share one shape.*\['a', 'b'\]"):
        multitask_collate([_sample("a", (5, 7)), _sample("b", (5, 7), input_hw=(4, 4))])
    with pytest.raises(ValueError, match="empty batch"):
        multitask_collate([])
