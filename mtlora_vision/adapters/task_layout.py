"""Task layouts: which task each leading row of a task-conditioned adapter's input belongs to.

A batch is single-task (``tasks="semseg"``), task-stacked (``tasks=("semseg", "depth")``: the
leading dimension is ``T * B``, rows ``[t*B:(t+1)*B]`` belong to the ``t``-th listed task,
"task-major"), or mixed (``tasks`` a LongTensor with the task index of every leading row).
Stacking survives Swin's window partition: ``(T*B, H, W, C)`` becomes ``(T*B*nW, N, C)`` and stays
task-major.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TypeAlias

import torch
from torch import Tensor

#: How the task of each leading row is given: one task name, task names stacked task-major, or
#: a LongTensor ``(N,)`` of task indices (positions in the layer's ``tasks``).
TaskLayout: TypeAlias = "str | Sequence[str] | Tensor"


def normalize_task_names(tasks: Sequence[str], what: str) -> tuple[str, ...]:
    """Return task names as a tuple of plain strings; refuse empty, duplicate or bare-string input.

    Args:
        tasks: Task names (``str`` or ``str`` Enum members such as ``Task.SEMSEG``).
        what: Name of the component, used in error messages.

    Returns:
        The names, in the given order.

    Raises:
        ValueError: If ``tasks`` is a single string, empty, or has duplicates.
    """
    if isinstance(tasks, str):
        raise ValueError(f"{what} needs a sequence of task names, got the single string {tasks!r}.")
    names = tuple(str(t.value) if isinstance(t, Enum) else str(t) for t in tasks)
    if not names:
        raise ValueError(f"{what} needs at least one task name, got {tasks!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate task names {list(names)} for {what}.")
    return names


def checked_task_ids(ids: Tensor, rows: int, tasks: Sequence[str], device: torch.device) -> Tensor:
    """Per-row task indices of a mixed layout as int64 on ``device``, checked.

    Args:
        ids: Integer tensor ``(rows,)`` of positions in ``tasks``.
        rows: Leading dimension of the input.
        tasks: The layer's task names.
        device: Where the ids are needed.

    Raises:
        ValueError: If ``ids`` is not an integer tensor of shape ``(rows,)``.
        KeyError: If an index is out of range.
    """
    if ids.dtype not in (torch.int64, torch.int32) or ids.shape != (rows,):
        raise ValueError(
            f"Per-row task ids must be an integer tensor of shape ({rows},), got "
            f"dtype {ids.dtype} and shape {tuple(ids.shape)}."
        )
    ids = ids.to(device=device, dtype=torch.int64)
    if ids.numel() and (ids.min() < 0 or ids.max() >= len(tasks)):
        raise KeyError(
            f"Task ids {torch.unique(ids).tolist()} out of range for the {len(tasks)} "
            f"tasks {list(tasks)}."
        )
    return ids
