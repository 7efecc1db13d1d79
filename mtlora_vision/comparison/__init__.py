"""Comparison of finished runs (``tools/compare.py``): runs, rows over seeds, table, Pareto plot."""

from mtlora_vision.comparison.pareto import pareto_front, plot_pareto
from mtlora_vision.comparison.rows import Row, compare_runs
from mtlora_vision.comparison.runs import NoResultError, RunResult, load_run
from mtlora_vision.comparison.table import format_markdown, write_csv

__all__ = [
    "NoResultError",
    "Row",
    "RunResult",
    "compare_runs",
    "format_markdown",
    "load_run",
    "pareto_front",
    "plot_pareto",
    "write_csv",
]
