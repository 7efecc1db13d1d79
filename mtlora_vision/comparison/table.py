"""The comparison as a Markdown table and a CSV file."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from mtlora_vision.comparison.rows import SINGLE_TASK, Row
from mtlora_vision.tasks import DEFAULT_DELTA_M_KEYS, LOWER_IS_BETTER_KEYS


def metric_columns(rows: Sequence[Row]) -> list[str]:
    """The Delta-m key of every task that appears in a row, in the order of the task list."""
    tasks = {t for row in rows for t in row.tasks}
    return [key for task, key in DEFAULT_DELTA_M_KEYS.items() if task in tasks]


def _fmt(value: float, std: float = math.nan) -> str:
    """``12.34``, or ``12.34 ± 0.56`` with a standard deviation; ``–`` for NaN."""
    if math.isnan(value):
        return "–"
    text = f"{round(value, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"
    return text if math.isnan(std) else f"{text} ± {std:.2f}"


def config_label(row: Row) -> str:
    """Short name of a row's config: the file name, or the count of merged single-task configs."""
    if row.name == SINGLE_TASK:
        return f"{len(row.tasks)} configs, one per task"
    names = dict.fromkeys(Path(config).name for config in row.configs)  # one per seed group
    return ", ".join(f"`{name}`" for name in names)


def seeds_label(row: Row) -> str:
    """Number of runs per row (per task for the single-task row, as a range if they differ)."""
    if row.name != SINGLE_TASK:
        return str(len(row.runs))
    counts = [sum(run.tasks == (task,) for run in row.runs) for task in row.tasks]
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}–{high}"


def delta_m_cell(row: Row) -> str:
    """Delta-m mean ± std, marked when it covers fewer tasks than the row has or was logged."""
    text = _fmt(row.delta_m, row.delta_m_std)
    if math.isnan(row.delta_m):
        return text
    if row.delta_m_source in ("logged", "mixed"):
        return f"{text} ({row.delta_m_source})"
    if len(row.delta_m_keys) < len(row.tasks):
        return f"{text} ({len(row.delta_m_keys)}/{len(row.tasks)} tasks)"
    return text


def format_markdown(rows: Sequence[Row]) -> str:
    """Markdown table: method, config, seeds, trainable parameters (M), task metrics, Delta-m."""
    columns = metric_columns(rows)
    names = [f"{k} {'↓' if k in LOWER_IS_BETTER_KEYS else '↑'}" for k in columns]
    header = ["method", "config", "seeds", "trainable (M)", *names, "Δm (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [
            _fmt(row.metrics.get(key, math.nan), row.metrics_std.get(key, math.nan))
            for key in columns
        ]
        trainable = f"{row.trainable / 1e6:.2f}"
        cells = [row.name, config_label(row), seeds_label(row), trainable, *values]
        lines.append("| " + " | ".join([*cells, delta_m_cell(row)]) + " |")
    return "\n".join(lines) + "\n"


def _csv_number(value: float, digits: int | None = None) -> str:
    if math.isnan(value):
        return ""
    return f"{value:.{digits}f}" if digits is not None else repr(value)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """CSV: every metric's mean and std, parameters, seeds, Delta-m and where each came from."""
    metric_keys = sorted({k for row in rows for k in row.metrics})
    fixed = ["method", "tasks", "num_runs", "seeds", "trainable", "total"]
    fixed += ["delta_m", "delta_m_std", "delta_m_source", "delta_m_keys"]
    stds = [f"{key} std" for key in metric_keys]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*fixed, *metric_keys, *stds, "configs", "work_dirs", "metrics_source"])
        for row in rows:
            writer.writerow(
                [
                    row.name,
                    " ".join(row.tasks),
                    len(row.runs),
                    " ".join(str(seed) for seed in row.seeds),
                    row.trainable,
                    row.total,
                    _csv_number(row.delta_m, 4),
                    _csv_number(row.delta_m_std, 4),
                    row.delta_m_source,
                    " ".join(row.delta_m_keys),
                    *[_csv_number(row.metrics.get(k, math.nan)) for k in metric_keys],
                    *[_csv_number(row.metrics_std.get(k, math.nan)) for k in metric_keys],
                    " ".join(row.configs),
                    " ".join(row.work_dirs),
                    row.metrics_source,
                ]
            )
