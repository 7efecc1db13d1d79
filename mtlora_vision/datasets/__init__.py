"""Multi-task datasets (PASCAL-Context, NYUD-v2), their transforms, collation and synthetic data."""

from mtlora_vision.datasets.collate import multitask_collate
from mtlora_vision.datasets.nyud import NYUDMT
from mtlora_vision.datasets.pascal_context import PascalContextMT
from mtlora_vision.datasets.synthetic import ensure_synthetic_dataset, make_synthetic_dataset
from mtlora_vision.datasets.transforms import MultiTaskTransform

__all__ = [
    "NYUDMT",
    "MultiTaskTransform",
    "PascalContextMT",
    "ensure_synthetic_dataset",
    "make_synthetic_dataset",
    "multitask_collate",
]
