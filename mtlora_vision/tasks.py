"""Task names, label conventions and per-dataset defaults shared by every part of the package.

The contract between datasets, models, losses and metrics (see ``docs/design.md``):

* every dense target uses ``IGNORE_INDEX`` (255) for pixels that carry no label;
* label maps (``semseg``, ``human_parts``, ``sal``, ``edge``) are ``int64`` tensors ``(H, W)``;
* ``normals`` is a ``float32`` tensor ``(3, H, W)`` of unit vectors, ``255.0`` on all three
  channels where invalid; ``depth`` is ``float32`` ``(1, H, W)`` in metres, ``255.0`` where invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum

IGNORE_INDEX = 255


class Task(str, Enum):
    """Dense prediction tasks known to the package."""

    SEMSEG = "semseg"
    HUMAN_PARTS = "human_parts"
    SAL = "sal"
    NORMALS = "normals"
    EDGE = "edge"
    DEPTH = "depth"


#: Number of head output channels per task and dataset.
NUM_OUTPUTS: Mapping[str, Mapping[str, int]] = {
    "pascal_context": {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1},
    "nyud": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
}

#: Tasks whose metric improves when it goes down (sign of the Delta-m term).
LOWER_IS_BETTER: frozenset[str] = frozenset({"normals", "depth"})


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
