"""Interleaved timing of several steps and its summary: medians, ratios, the FLOP floor.

Timing runs all variants in one process, interleaved step by step (A, B, C, A, B, C, ...), so load
from other processes hits every variant alike; medians and the median of per-round ratios are
reported, of wall-clock seconds and (``cpu_*``) of the process's CPU seconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from torch import Tensor

from mtlora_vision.engine.precision import Precision, detect_precision

#: Suffix of the ``torch.compile`` twin of a variant (``--compile``).
COMPILED = "+compiled"


def resolve_precisions(requested: list[str]) -> list[Precision]:
    """The distinct precisions ``requested`` gives on this machine (``auto`` and its mode once)."""
    chosen: dict[str, Precision] = {}
    for name in requested:
        precision = detect_precision(name)
        chosen.setdefault(precision.mode, precision)
    return list(chosen.values())


def timed_name(variant: str, precision: Precision, several: bool) -> str:
    """Report key of a variant: its name, with ``@mode`` when several precisions are timed."""
    return f"{variant}@{precision.mode}" if several else variant


def time_interleaved(
    steps: dict[str, Callable[[Tensor], None]], images: Tensor, iters: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per step for every variant, measured round-robin.

    With one thread the CPU time is the steadier figure on a shared machine: time spent waiting
    for a core that another process holds is not counted.
    """
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for it in range(warmup + iters):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(images)
            if it >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def summarize(
    times: dict[str, list[float]], reference: str, prefix: str = "", label: str | None = None
) -> dict[str, dict[str, Any]]:
    """Medians and ratios against ``reference`` (of medians and median of per-round ratios).

    Keys are ``{prefix}median_s``, ``{prefix}all_s``, ``{prefix}ratio_vs_<label>`` and
    ``{prefix}round_ratio_vs_<label>`` (``label`` defaults to ``reference``).
    """
    out: dict[str, dict[str, Any]] = {}
    ref = times.get(reference)
    label = label or reference
    for name, values in times.items():
        median = statistics.median(values)
        entry = {f"{prefix}median_s": median, f"{prefix}all_s": [round(v, 4) for v in values]}
        if ref is not None and name != reference:
            entry[f"{prefix}ratio_vs_{label}"] = median / statistics.median(ref)
            entry[f"{prefix}round_ratio_vs_{label}"] = statistics.median(
                v / r for v, r in zip(values, ref, strict=True)
            )
        out[name] = entry
    return out


def summarize_precision(
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    names: dict[str, str],
    flops: dict[str, int],
    mode: str,
    several: bool,
) -> dict[str, dict[str, Any]]:
    """Summaries of the timed keys ``names`` (key -> variant) of one precision ``mode``.

    Medians and ratios against ``frozen`` of the same precision (:func:`summarize`, wall and CPU
    seconds), GFLOPs, the FLOP ratio against ``frozen`` (the floor of the measured ratio),
    ``over_floor`` (measured ratio / floor), with several precisions ``ratio_vs_fp32`` against
    the same variant in fp32, and for compiled twins ``ratio_vs_eager`` against the eager one.
    """
    ref = next((k for k, v in names.items() if v == "frozen"), "")
    summary = summarize({n: wall[n] for n in names}, ref, label="frozen")
    for name, entry in summarize({n: cpu[n] for n in names}, ref, "cpu_", "frozen").items():
        summary[name].update(entry)
    for name, variant in names.items():
        entry = summary[name]
        entry["precision"] = mode
        entry["gflops"] = flops[variant] / 1e9
        if "frozen" in flops and variant != "frozen":
            floor = entry["flop_ratio_vs_frozen"] = flops[variant] / flops["frozen"]
            if "ratio_vs_frozen" in entry:
                entry["over_floor"] = entry["ratio_vs_frozen"] / floor
                entry["round_over_floor"] = entry["round_ratio_vs_frozen"] / floor
        base, _, _ = name.partition("@")
        others = {"fp32": f"{base}@fp32" if several else "", "eager": name.replace(COMPILED, "")}
        for label, other in others.items():  # the same variant in fp32 / not compiled
            if other != name and other in wall:
                pair = summarize({other: wall[other], name: wall[name]}, other, label=label)
                entry.update({k: v for k, v in pair[name].items() if "_vs_" in k})
    return summary
