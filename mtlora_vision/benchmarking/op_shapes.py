"""A step's aten calls timed by operator, input shapes and layout (``profile_floor --by-shape``).

The profiler's operator table sums the calls of one operator over all shapes, and recording
shapes in the profiler slows some operators down (``record_shapes=True`` made ``bmm`` 2.4x slower
in one step here). A ``TorchDispatchMode`` sees every aten call of the step, forward and backward,
with its tensors, and times each call on its own: a row is one operator with its tensor
arguments' shapes and dtypes, and the strides of those that are not contiguous, so the same
product on a transposed view is a row of its own. That is how layout costs show: a contiguous
copy of a thin operand before ``baddbmm``, a gradient handed on transposed. The mode adds Python
time between calls, never inside one; times are per step, averaged over the timed steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class ShapeRow:
    """One operator with one set of argument shapes: its calls and time per step."""

    op: str
    args: tuple[str, ...]
    calls: float
    ms: float


def describe(value: Any) -> str | None:
    """``"4x12544x384 bfloat16"``, plus ``strides (...)`` when not contiguous; None if no tensor."""
    if not isinstance(value, Tensor):
        return None
    shape = "x".join(str(n) for n in value.shape) or "scalar"
    text = f"{shape} {str(value.dtype).removeprefix('torch.')}"
    if not value.is_contiguous():
        text += f" strides {tuple(value.stride())}"
    return text


class OpShapeTimer(TorchDispatchMode):
    """Total calls and seconds per (operator, argument descriptions) while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.totals: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(lambda: [0, 0.0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        described = (describe(leaf) for leaf in tree_leaves((args, kwargs)))
        total = self.totals[(str(func), tuple(d for d in described if d is not None))]
        total[0] += 1
        total[1] += elapsed
        return out


def time_by_shape(
    step: Callable[[Tensor], None], images: Tensor, steps: int = 2, warmup: int = 1
) -> list[ShapeRow]:
    """Run ``warmup`` plain steps, then ``steps`` timed ones; rows by time per step, largest first.

    Args:
        step: One training or inference step on ``images`` (as ``benchmarking.steps`` makes).
        images: The input batch.
        steps: Timed steps (at least 1); calls and times are averaged over them.
        warmup: Untimed steps first (caches, allocator, lazily built tables).
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: at least one timed step is needed.")
    for _ in range(warmup):
        step(images)
    timer = OpShapeTimer()
    with timer:
        for _ in range(steps):
            step(images)
    rows = [
        ShapeRow(op, args, calls / steps, seconds * 1e3 / steps)
        for (op, args), (calls, seconds) in timer.totals.items()
    ]
    return sorted(rows, key=lambda row: -row.ms)


def top_rows(rows: list[ShapeRow], top: int) -> list[dict[str, Any]]:
    """The ``top`` rows as dicts, then one row ``[N more]`` with the rest's calls and time."""
    head = [dataclasses.asdict(row) for row in rows[:top]]
    rest = rows[top:]
    if rest:
        calls, ms = sum(r.calls for r in rest), sum(r.ms for r in rest)
        head.append({"op": f"[{len(rest)} more]", "args": [], "calls": calls, "ms": ms})
    return head
