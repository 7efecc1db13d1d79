"""Pareto plot of a comparison: trainable parameters (log scale) against Delta-m."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from mtlora_vision.comparison.rows import Row
from mtlora_vision.comparison.table import seeds_label


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal parameters and higher Δm)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy >= y) and (ox < x or oy > y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def dodge_same_x(
    points: Sequence[tuple[float, float]],
) -> tuple[dict[float, list[int]], list[float], list[int]]:
    """Spread points that share an x (e.g. one adapter trained three ways) for drawing.

    Returns:
        The indices per x value (sorted by y), an x factor per point (1.07 steps around 1 on a
        log axis; 1 for a lone point) and each point's rank by y among those sharing its x.
    """
    same_x: dict[float, list[int]] = {}
    for i, (x, _) in enumerate(points):
        same_x.setdefault(x, []).append(i)
    dodge, rank = [1.0] * len(points), [0] * len(points)
    for indices in same_x.values():
        indices.sort(key=lambda i: points[i][1])
        for j, i in enumerate(indices):
            dodge[i] = 1.07 ** (j - (len(indices) - 1) / 2)
            rank[i] = j
    return same_x, dodge, rank


def label_layout(
    points: Sequence[tuple[float, float]], gap: float, cluster: float = 0.3
) -> list[tuple[float, float]]:
    """Label positions (data coordinates, log x) that do not overlap.

    Points whose x lie within ``cluster`` decades of their neighbour form a cluster; its labels
    stand in one column right of its largest x, in the order of the points' y, at least ``gap``
    apart, centred on the points' mean y.

    Returns:
        ``(x, y)`` of each point's label.
    """
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    clusters: list[list[int]] = []
    for i in order:
        near = clusters and math.log10(points[i][0]) - math.log10(points[clusters[-1][-1]][0])
        if clusters and near <= cluster:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)
    for members in clusters:
        members.sort(key=lambda i: points[i][1])
        ys = [points[i][1] for i in members]
        placed = list(ys)
        for j in range(1, len(placed)):
            placed[j] = max(placed[j], placed[j - 1] + gap)
        shift = statistics.fmean(placed) - statistics.fmean(ys)
        right = max(points[i][0] for i in members) * (1.25 if len(members) > 1 else 1.12)
        for i, y in zip(members, placed, strict=True):
            out[i] = (right, y - shift)
    return out


def plot_pareto(rows: Sequence[Row], path: Path, title: str | None = None) -> int:
    """Draw trainable parameters (log x) against mean Delta-m, one labelled point per row.

    A row over several seeds gets an error bar of one standard deviation; rows with the same
    parameter count are dodged apart in x (:func:`dodge_same_x`) with their labels stacked; rows
    without a Delta-m are named in a note under the axes. The dashed line joins the rows that no
    other row beats (by mean Delta-m).

    Args:
        rows: The comparison rows.
        path: PNG file to write.
        title: Plot title (e.g. what data the runs saw), or None.

    Returns:
        The number of points drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not math.isnan(r.delta_m)]
    missing = [r.name for r in rows if math.isnan(r.delta_m)]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = [(float(r.trainable), r.delta_m) for r in shown]
    _, dodge, _ = dodge_same_x(points)
    for i, (row, (x, y)) in enumerate(zip(shown, points, strict=True)):
        err = None if math.isnan(row.delta_m_std) else row.delta_m_std
        ax.errorbar(x * dodge[i], y, yerr=err, fmt="o", capsize=3, ms=5)
    if points:
        ax.set_xscale("log")
        ax.margins(x=0.2, y=0.08)
    low, high = ax.get_ylim()
    for i, (tx, ty) in enumerate(label_layout(points, gap=0.055 * (high - low))):
        (x, y), label = points[i], f"{shown[i].name} (n={seeds_label(shown[i])})"
        ax.annotate(
            label,
            (x * dodge[i], y),
            xytext=(tx, ty),
            textcoords="data",
            fontsize=7,
            va="center",
            arrowprops=dict(arrowstyle="-", lw=0.4, color="grey"),
        )
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("Δm (%), mean ± std over seeds")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.grid(True, which="both", lw=0.3)
    if missing:
        note = "no Δm (no baselines): " + ", ".join(missing)
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(shown)
