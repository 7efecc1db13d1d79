"""Where the time over the FLOP floor goes: per-op and per-module profiles of two variants.

The floor of a variant's time against ``frozen`` is its FLOP ratio ``f`` (``tools/benchmark.py``):
a step that scaled every piece of the frozen step's work by ``f`` would take ``f * frozen``. The
time over the floor is ``model - f * frozen``; this module splits it into the same difference per
key, ``model[k] - f * frozen[k]``, for several keyings of the profiled self CPU time:

* ``ops``: the aten operator (``aten::addmm``, ``aten::native_layer_norm``, ...); the Python time
  between operators is the key ``[python and untraced]`` (wall time minus the operators' self
  time).
* ``modules``: ``forward:<class>`` or ``backward:<class>``, the innermost module class whose
  forward ran the operator (timm's ``LayerNorm``, ``GELU``, our ``MTLoRALinear``, ...). Backward
  operators are attributed through the autograd node to the module that ran the forward
  operator which made it (the profiler's sequence numbers). Work in functions that the backbone
  calls outside a module's forward (window attention's softmax and its token permutations) lands
  on the innermost module around them (usually the backbone).
* ``kinds``: ``matmul`` (matrix products, convolutions and fused attention: the operators whose
  FLOPs the floor counts) against ``other`` (element-wise work, copies, normalisation, random
  numbers), whose time FLOPs do not see; ``module_ops``: module key and operator together.

Per-op rows of FLOP-carrying operators compare unlike work (the frozen Swin has no backbone
backward, so no ``aten::mm`` of its own to speak of); ``kinds`` is the fair split of those.

Keys summed over equal ``model - f * frozen`` up to rounding. Profiles are taken step by step in
interleaved rounds (``model``, ``frozen``, ``model``, ...) and averaged per step; profiling adds a
few microseconds per operator to both variants.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.autograd.profiler_util import FunctionEvent

MODULE_PREFIX = "module:"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
UNTRACED = "[python and untraced]"

#: Lines that kineto (the profiler's backend) writes to file descriptor 2 on every profile of a
#: CPU-only build: its start and stop markers and a failed GPU count.
KINETO_NOISE = re.compile(
    r"^(USDT:.*\] profiler_(start|stop)|ERROR:.*\] gpuGetDeviceCount failed with code \d+)$"
)


@contextmanager
def kineto_noise_filtered() -> Iterator[None]:
    """Drop :data:`KINETO_NOISE` lines from file descriptor 2 while inside; pass on the others.

    Kineto writes from C++, so ``sys.stderr`` cannot catch it: descriptor 2 goes to a temporary
    file meanwhile, and what else was written there is written to stderr on the way out.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not KINETO_NOISE.match(line.rstrip("\n"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextmanager
def module_ranges(model: nn.Module) -> Iterator[None]:
    """Mark every module's forward with a profiler range ``module:<class>`` while inside."""
    handles = []

    def enter(module: nn.Module, *_: object) -> None:
        module._profile_range = torch.ops.profiler._record_function_enter_new(
            MODULE_PREFIX + type(module).__name__
        )

    def leave(module: nn.Module, *_: object) -> None:
        handle = module.__dict__.pop("_profile_range", None)
        if handle is not None:
            torch.ops.profiler._record_function_exit._RecordFunction(handle)

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _ancestor(event: FunctionEvent, prefix: str) -> FunctionEvent | None:
    """The nearest enclosing event whose name starts with ``prefix`` (or None)."""
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(prefix):
        parent = parent.cpu_parent
    return parent


def _module_name(event: FunctionEvent) -> str:
    """Class of the innermost module range around ``event``."""
    owner = _ancestor(event, MODULE_PREFIX)
    return owner.name[len(MODULE_PREFIX) :] if owner is not None else "(no module)"


def op_kind(name: str) -> str:
    """``matmul`` for the operators that carry the counted FLOPs, else ``other`` (pure)."""
    flop_carrying = ("mm", "conv", "attention")
    return "matmul" if any(part in name for part in flop_carrying) else "other"


def attribute(events: list[FunctionEvent]) -> dict[str, dict[str, float]]:
    """Self CPU microseconds of the operators in ``events``, keyed four ways.

    Returns:
        Tables ``ops`` (aten name), ``modules`` (``forward:<class>``, ``backward:<class>``),
        ``kinds`` (:func:`op_kind`: matmul and convolution against the rest) and
        ``module_ops`` (``<module key> <op>``). Ranges (``module:``, autograd engine,
        ``record_function``) are not operators and are left out: every table sums to the
        operators' self time.
    """
    module_of_seq: dict[int, str] = {}
    tables: dict[str, dict[str, float]] = {
        t: defaultdict(float) for t in ("ops", "modules", "kinds", "module_ops")
    }
    for event in events:  # forward events that made autograd nodes (ops, custom Functions)
        if event.sequence_nr >= 0 and _ancestor(event, BACKWARD_PREFIX) is None:
            module_of_seq.setdefault(event.sequence_nr, _module_name(event))
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        node = _ancestor(event, BACKWARD_PREFIX)
        if node is None:
            module = f"forward:{_module_name(event)}"
        else:
            owner = module_of_seq.get(node.sequence_nr, node.name[len(BACKWARD_PREFIX) :])
            module = f"backward:{owner}"
        keys = (event.name, module, op_kind(event.name), f"{module} {event.name}")
        for table, key in zip(tables.values(), keys, strict=True):
            table[key] += event.self_cpu_time_total
    return {name: dict(table) for name, table in tables.items()}


def profile_step(
    step: Callable[[Tensor], None], model: nn.Module, images: Tensor
) -> dict[str, dict[str, float]]:
    """One profiled ``step(images)``: milliseconds per op and per module key, and the wall time.

    Returns:
        The tables of :func:`attribute` in milliseconds, each with :data:`UNTRACED` so that it
        sums to the wall time, and ``wall_ms: {"total": ...}``.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with (
        kineto_noise_filtered(),
        module_ranges(model),
        torch.profiler.profile(activities=activities) as prof,
    ):
        start = time.perf_counter()
        step(images)
        wall_ms = (time.perf_counter() - start) * 1e3
    tables = attribute(list(prof.events()))
    traced_ms = sum(tables["ops"].values()) / 1e3
    result = {name: {k: v / 1e3 for k, v in table.items()} for name, table in tables.items()}
    for table in result.values():
        table[UNTRACED] = wall_ms - traced_ms
    result["wall_ms"] = {"total": wall_ms}
    return result


def profile_interleaved(
    steps: dict[str, tuple[Callable[[Tensor], None], nn.Module]],
    images: Tensor,
    iters: int,
    warmup: int = 1,
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean per-step profile (:func:`profile_step`) of every variant, profiled round-robin."""
    for _ in range(warmup):
        for step, _model in steps.values():
            step(images)
    sums: dict[str, dict[str, dict[str, float]]] = {name: defaultdict(dict) for name in steps}
    for _ in range(iters):
        for name, (step, model) in steps.items():
            for table, values in profile_step(step, model, images).items():
                for key, ms in values.items():
                    sums[name][table][key] = sums[name][table].get(key, 0.0) + ms / iters
    return {name: dict(tables) for name, tables in sums.items()}


def over_floor(
    model: dict[str, float], frozen: dict[str, float], flop_ratio: float
) -> list[tuple[str, float, float, float]]:
    """Rows ``(key, model ms, frozen ms, model - flop_ratio * frozen)``, largest excess first.

    The excesses sum to ``sum(model) - flop_ratio * sum(frozen)``: the time over the floor.
    """
    rows = []
    for key in set(model) | set(frozen):
        ms, ref = model.get(key, 0.0), frozen.get(key, 0.0)
        rows.append((key, ms, ref, ms - flop_ratio * ref))
    return sorted(rows, key=lambda row: -row[3])
