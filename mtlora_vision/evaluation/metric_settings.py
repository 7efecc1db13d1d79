"""Settings of :class:`~mtlora_vision.evaluation.metrics.MultiTaskMetric`, checked and resolved.

Pure functions from the metric's arguments (or the evaluated dataset's ``dataset_meta``) to the
values it uses: class counts and names, Delta-m baselines and keys, the edge tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from mtlora_vision.evaluation.functional.boundary import MAX_DIST
from mtlora_vision.tasks import DEFAULT_DELTA_M_KEYS, NUM_OUTPUTS, Kind, task_kind

#: Single-task full fine-tuning of Swin-T on PASCAL-Context (MTLoRA paper, Table 1).
PAPER_SWIN_T_BASELINES: Mapping[str, float] = MappingProxyType(
    {"semseg/mIoU": 67.21, "human_parts/mIoU": 61.93, "sal/mIoU": 62.35, "normals/mean": 17.97}
)


def resolve_num_classes(
    tasks: Sequence[str], dataset: str | None, num_classes: Mapping[str, int] | None
) -> dict[str, int]:
    """Classes per segmentation task: ``num_classes`` first, else the dataset's outputs."""
    given = dict(num_classes or {})
    defaults = NUM_OUTPUTS.get(dataset or "", {})
    resolved: dict[str, int] = {}
    for task in tasks:
        if task_kind(task) is not Kind.CLASSES:
            continue
        if task not in given and task not in defaults:
            raise ValueError(f"num_classes[{task!r}] is required when dataset={dataset!r}.")
        resolved[task] = int(given.get(task, defaults.get(task, 0)))
        if resolved[task] < 1:
            raise ValueError(f"num_classes[{task!r}]={resolved[task]} must be >= 1.")
    return resolved


def resolve_class_names(
    num_classes: Mapping[str, int], class_names: Mapping[str, Sequence[str]] | None
) -> dict[str, tuple[str, ...]]:
    """Class names per segmentation task (indices when not given); counts must match."""
    names = dict(class_names or {})
    resolved: dict[str, tuple[str, ...]] = {}
    for task, count in num_classes.items():
        resolved[task] = tuple(str(n) for n in names.get(task, range(count)))
        if len(resolved[task]) != count:
            raise ValueError(
                f"class_names[{task!r}] has {len(resolved[task])} names for {count} classes."
            )
    return resolved


def resolve_edge_max_dist(given: float | None, dataset: str | None) -> float:
    """Boundary tolerance: ``given``, else the dataset's (PASCAL-Context's for others)."""
    if given is not None:
        return float(given)
    return MAX_DIST.get(dataset or "", MAX_DIST["pascal_context"])


def resolve_baselines(
    baselines: Mapping[str, float] | None, dataset: str | None
) -> dict[str, float]:
    """Delta-m baselines: ``None`` means the paper's for PASCAL-Context, none otherwise."""
    if baselines is None:
        baselines = PAPER_SWIN_T_BASELINES if dataset == "pascal_context" else {}
    resolved = {str(k): float(v) for k, v in baselines.items()}
    bad = {k: v for k, v in resolved.items() if v == 0 or not math.isfinite(v)}
    if bad:
        raise ValueError(f"Delta-m baselines must be finite and non-zero, got {bad}.")
    return resolved


def resolve_delta_m_keys(
    tasks: Sequence[str], delta_m_keys: Mapping[str, str] | None
) -> dict[str, str]:
    """Task -> Delta-m key: overrides over the defaults, each key prefixed by its task."""
    overrides = dict(delta_m_keys or {})
    unknown = [t for t in overrides if t not in tasks]
    if unknown:
        raise ValueError(f"delta_m_keys names task(s) {unknown} not evaluated ({list(tasks)}).")
    keys = {task: overrides.get(task, DEFAULT_DELTA_M_KEYS[task]) for task in tasks}
    wrong = {t: k for t, k in keys.items() if not k.startswith(f"{t}/")}
    if wrong:
        raise ValueError(f"Delta-m keys must start with their task name, got {wrong}.")
    return keys
