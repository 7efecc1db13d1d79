"""Every per-task fact of the package, in one table: :data:`TASKS`.

For each task: the kind of its prediction (which decides decoding, colours and file formats), its
head outputs per dataset, its default loss weight, its metric keys and their direction, the key that
stands for it in Delta-m, the colour map and the title of its pictures. Losses, metrics,
postprocessing, visualisation and configs read them from here.

The contract between datasets, models, losses and metrics (see ``docs/design.md``):

* every dense target uses ``IGNORE_INDEX`` (255) for pixels that carry no label;
* label maps (``semseg``, ``human_parts``, ``sal``, ``edge``) are ``int64`` tensors ``(H, W)``;
* ``normals`` is a ``float32`` tensor ``(3, H, W)`` of unit vectors, ``255.0`` on all three
  channels where invalid; ``depth`` is ``float32`` ``(1, H, W)`` in metres, ``255.0`` where invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

IGNORE_INDEX = 255

#: Edge evaluation protocols (``docs/edge_evaluation.md``): SEISM's (published numbers) and BSDS's.
EDGE_PROTOCOLS: tuple[str, ...] = ("seism", "bsds")

#: Positive-class weight of the edge loss and of its evaluation proxy (official ``edge_w``).
EDGE_POS_WEIGHT = 0.95


class Task(str, Enum):
    """Dense prediction tasks known to the package."""

    SEMSEG = "semseg"
    HUMAN_PARTS = "human_parts"
    SAL = "sal"
    NORMALS = "normals"
    EDGE = "edge"
    DEPTH = "depth"


class Kind(str, Enum):
    """What a task predicts per pixel (decides decoding, pictures and prediction files)."""

    CLASSES = "classes"  # arg-max class id; 8-bit PNG; VOC palette
    PROBABILITY = "probability"  # sigmoid probability; 8-bit PNG of 255 p; grey levels
    VECTOR = "vector"  # unit vector; RGB PNG of 255 (n + 1) / 2
    SCALAR = "scalar"  # a real value (metres); float32 .mat; colour map


HIGHER = "higher"
LOWER = "lower"


@dataclass(frozen=True)
class TaskInfo:
    """The facts of one task.

    Attributes:
        kind: What the task predicts per pixel.
        outputs: Dataset -> number of head output channels.
        loss_weight: Weight of the task's loss in the official recipe (``docs/recipe.md#losses``).
        metrics: Metric key -> ``"higher"`` or ``"lower"`` (the better direction).
        delta_m_key: Metric key that stands for the task in Delta-m.
        colormap: Colour map of pictures: ``"palette"``, ``"grey"``, ``"normals"`` or ``"viridis"``.
        title: Name of the task in pictures and reports.
    """

    kind: Kind
    outputs: Mapping[str, int]
    loss_weight: float
    metrics: Mapping[str, str]
    delta_m_key: str
    colormap: str
    title: str


def _info(
    kind: Kind,
    outputs: dict[str, int],
    loss_weight: float,
    metrics: dict[str, str],
    delta_m_key: str,
    colormap: str,
    title: str,
) -> TaskInfo:
    outputs, metrics = MappingProxyType(outputs), MappingProxyType(metrics)
    return TaskInfo(kind, outputs, loss_weight, metrics, delta_m_key, colormap, title)


#: The facts of every task (``docs/recipe.md`` for losses and metrics).
TASKS: Mapping[str, TaskInfo] = MappingProxyType(
    {
        "semseg": _info(
            Kind.CLASSES,
            {"pascal_context": 21, "nyud": 40},
            1.0,
            {"semseg/mIoU": HIGHER},
            "semseg/mIoU",
            "palette",
            "semantic segmentation",
        ),
        "human_parts": _info(
            Kind.CLASSES,
            {"pascal_context": 7},
            2.0,
            {"human_parts/mIoU": HIGHER},
            "human_parts/mIoU",
            "palette",
            "human parts",
        ),
        "sal": _info(
            Kind.PROBABILITY,
            {"pascal_context": 1},
            5.0,
            {"sal/mIoU": HIGHER, "sal/maxF": HIGHER, "sal/maxFbeta": HIGHER},
            "sal/mIoU",
            "grey",
            "saliency",
        ),
        "normals": _info(
            Kind.VECTOR,
            {"pascal_context": 3, "nyud": 3},
            10.0,
            {
                "normals/mean": LOWER,
                "normals/median": LOWER,
                "normals/rmse": LOWER,
                "normals/11.25": HIGHER,
                "normals/22.5": HIGHER,
                "normals/30": HIGHER,
            },
            "normals/mean",
            "normals",
            "surface normals",
        ),
        "edge": _info(
            Kind.PROBABILITY,
            {"pascal_context": 1, "nyud": 1},
            50.0,
            {"edge/bce": LOWER, "edge/odsF": HIGHER, "edge/oisF": HIGHER, "edge/AP": HIGHER},
            "edge/odsF",
            "grey",
            "edges",
        ),
        "depth": _info(
            Kind.SCALAR,
            {"nyud": 1},
            1.0,
            {"depth/rmse": LOWER, "depth/log_rmse": LOWER},
            "depth/rmse",
            "viridis",
            "depth",
        ),
    }
)

DATASETS: tuple[str, ...] = ("pascal_context", "nyud")

#: Number of head output channels per dataset and task.
NUM_OUTPUTS: Mapping[str, Mapping[str, int]] = {
    dataset: {
        name: info.outputs[dataset] for name, info in TASKS.items() if dataset in info.outputs
    }
    for dataset in DATASETS
}

#: Loss weight per task of the official recipe.
OFFICIAL_LOSS_WEIGHTS: Mapping[str, float] = {
    name: info.loss_weight for name, info in TASKS.items()
}
#: Metric key that stands for each task in Delta-m, unless overridden.
DEFAULT_DELTA_M_KEYS: Mapping[str, str] = MappingProxyType(
    {name: info.delta_m_key for name, info in TASKS.items()}
)
#: Metric keys that improve when they go down (sign of their Delta-m term).
LOWER_IS_BETTER_KEYS: frozenset[str] = frozenset(
    key for info in TASKS.values() for key, direction in info.metrics.items() if direction == LOWER
)


def task_kind(task: str) -> Kind:
    """Return the :class:`Kind` of ``task``; an unknown task is a ``ValueError``."""
    try:
        return TASKS[task].kind
    except KeyError:
        raise ValueError(f"Unknown task {task!r}; known tasks: {list(TASKS)}.") from None


def check_tasks(
    tasks: Iterable[str], available: Iterable[str], what: str = "the model"
) -> tuple[str, ...]:
    """Validate task names and return them as a tuple, keeping their order.

    Args:
        tasks: Requested task names.
        available: Task names that ``what`` supports.
        what: Name of the component, used in the error message.

    Returns:
        The requested tasks as a tuple.

    Raises:
        ValueError: If ``tasks`` is empty, has duplicates, or names a task ``what`` does not have.
    """
    tasks = tuple(str(t.value if isinstance(t, Task) else t) for t in tasks)
    available = tuple(available)
    if not tasks:
        raise ValueError(f"No tasks given for {what}; choose from {list(available)}.")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"Duplicate task names {list(tasks)} for {what}.")
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown} for {what}; it has {list(available)}.")
    return tasks
