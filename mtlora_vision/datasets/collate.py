"""Batching of multi-task samples (``docs/design.md`` section 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def multitask_collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the inputs of a batch and keep the per-sample metadata and targets as a list.

    Only ``inputs`` are stacked, so samples whose targets differ in size (original-resolution
    evaluation) batch fine; loss code stacks targets itself when they share a size.

    Args:
        batch: Samples ``{"inputs": (3, H, W), "data_samples": dict}``; all inputs share ``(H, W)``.

    Returns:
        ``{"inputs": float32 (B, 3, H, W), "data_samples": list of B dicts}``.

    Raises:
        ValueError: On an empty batch or inputs of different shapes.
    """
    if not batch:
        raise ValueError("multitask_collate got an empty batch.")
    shapes = {tuple(sample["inputs"].shape) for sample in batch}
    if len(shapes) != 1:
        ids = [sample["data_samples"].get("id") for sample in batch]
        raise ValueError(
            f"Inputs of a batch must share one shape, got {sorted(shapes)} for ids {ids}; resize "
            "inputs to the model size (targets may keep their own sizes)."
        )
    return {
        "inputs": torch.stack([sample["inputs"] for sample in batch]),
        "data_samples": [sample["data_samples"] for sample in batch],
    }
