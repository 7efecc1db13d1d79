"""Rows of a comparison: runs grouped over seeds, single-task runs merged, Delta-m per run.

Seeds: runs whose dumped configs are equal up to ``randomness.seed`` (and the work dir, launcher
and resume flag) are one row. Each metric and Delta-m is a mean and sample standard deviation over
the row's runs.

Delta-m (MTLoRA's definition, :func:`mtlora_vision.evaluation.functional.delta_m.delta_m`), per
run, in this order: the given baselines; else single-task runs among the runs (every run with
exactly one task is a baseline, averaged over its seeds; together they form one "single-task" row,
Delta-m 0 by definition, whose parameters are the sum of one model per task); else the
``multitask/delta_m`` the run logged.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtlora_vision.comparison.runs import RunResult, load_runs
from mtlora_vision.tasks import DEFAULT_DELTA_M_KEYS, LOWER_IS_BETTER_KEYS

logger = logging.getLogger(__name__)

SINGLE_TASK = "single-task"


@dataclass
class Row:
    """One table row: the runs of one config over seeds, or the merged single-task runs.

    ``metrics``/``delta_m`` are means over the runs, ``metrics_std``/``delta_m_std`` sample
    standard deviations (NaN with one run).
    """

    name: str
    runs: list[RunResult]
    tasks: tuple[str, ...]
    trainable: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_std: dict[str, float] = field(default_factory=dict)
    delta_m: float = math.nan
    delta_m_std: float = math.nan
    delta_m_source: str = "none"
    delta_m_keys: list[str] = field(default_factory=list)

    @property
    def work_dirs(self) -> list[str]:
        """The runs' work dirs, in order."""
        return [run.work_dir for run in self.runs]

    @property
    def configs(self) -> list[str]:
        """The runs' config files, each once, in order."""
        return list(dict.fromkeys(run.config for run in self.runs))

    @property
    def metrics_source(self) -> str:
        """Where each run's metrics came from, joined by '; '."""
        return "; ".join(run.metrics_source for run in self.runs)

    @property
    def seeds(self) -> list[int | None]:
        """The runs' seeds (None where a config has none)."""
        return [run.seed for run in self.runs]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), std


def group_runs(runs: Sequence[RunResult]) -> list[list[RunResult]]:
    """Runs grouped by config up to the seed, in order of appearance; warns on a repeated seed."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.group_key, []).append(run)
    for group in groups.values():
        seeds = [run.seed for run in group if run.seed is not None]
        if len(seeds) != len(set(seeds)):
            logger.warning(
                "Runs of %s share a seed (%s): %s; each still counts as one run.",
                group[0].name,
                seeds,
                [run.work_dir for run in group],
            )
    return list(groups.values())


def single_task_baselines(groups: Sequence[Sequence[RunResult]]) -> dict[str, float]:
    """Delta-m baselines from one-task runs: each task's Delta-m key, averaged over its seeds."""
    baselines = {}
    for group in groups:
        (task,) = group[0].tasks
        key = DEFAULT_DELTA_M_KEYS.get(task)
        values = [run.metrics[key] for run in group if key in run.metrics]
        if values and all(math.isfinite(v) for v in values):
            mean = statistics.fmean(values)
            if mean != 0:
                baselines[key] = mean
    return baselines


def run_delta_m(run: RunResult, baselines: Mapping[str, float]) -> tuple[float, list[str], str]:
    """Delta-m of one run over the baselines of its tasks, else its logged value, else NaN."""
    from mtlora_vision.evaluation.functional.delta_m import delta_m

    keys = [DEFAULT_DELTA_M_KEYS[t] for t in run.tasks if t in DEFAULT_DELTA_M_KEYS]
    used = {k: baselines[k] for k in keys if k in baselines and k in run.metrics}
    if used:
        return delta_m(run.metrics, used, LOWER_IS_BETTER_KEYS), sorted(used), "baselines"
    if "multitask/delta_m" in run.metrics:
        return run.metrics["multitask/delta_m"], [], "logged"
    return math.nan, [], "none"


def summarise(row: Row, metric_runs: Sequence[Sequence[RunResult]]) -> None:
    """Fill ``row.metrics``/``metrics_std`` with mean and std over each group of ``metric_runs``."""
    for runs in metric_runs:
        for key in sorted({k for run in runs for k in run.metrics}):
            mean, std = mean_std([run.metrics[key] for run in runs if key in run.metrics])
            row.metrics[key], row.metrics_std[key] = mean, std


def multitask_row(runs: list[RunResult], baselines: Mapping[str, float], source: str) -> Row:
    """One row for the seeds of one multi-task config, Delta-m per run then mean and std."""
    first = runs[0]
    row = Row(first.name, runs, first.tasks, first.trainable, first.total)
    summarise(row, [runs])
    results = [run_delta_m(run, baselines) for run in runs]
    for run, (value, _, _) in zip(runs, results, strict=True):
        run.delta_m = value
    values = [value for value, _, _ in results if not math.isnan(value)]
    if values:
        row.delta_m, row.delta_m_std = mean_std(values)
        kinds = {kind for _, _, kind in results}
        row.delta_m_source = (
            source if kinds == {"baselines"} else "logged" if kinds == {"logged"} else "mixed"
        )
        row.delta_m_keys = sorted({k for _, keys, _ in results for k in keys})
    return row


def single_task_row(
    groups: Sequence[list[RunResult]], baselines: Mapping[str, float], source: str
) -> Row:
    """One row for all single-task runs: summed parameters of one model per task.

    Delta-m is computed per seed that every task has (that seed's five models against the
    baselines), then averaged; with baselines from these very runs its mean is 0.
    """
    from mtlora_vision.evaluation.functional.delta_m import delta_m

    runs = [run for group in groups for run in group]
    tasks = tuple(group[0].tasks[0] for group in groups)
    row = Row(
        SINGLE_TASK,
        runs,
        tasks,
        trainable=sum(group[0].trainable for group in groups),
        total=sum(group[0].total for group in groups),
    )
    summarise(row, groups)
    common = set.intersection(*({run.seed for run in group} for group in groups))
    values = []
    for seed in sorted(common, key=lambda s: (s is None, s)):
        metrics: dict[str, float] = {}
        for group in groups:
            metrics.update(next(run for run in group if run.seed == seed).metrics)
        keys = [k for k in baselines if k in metrics]
        if keys:
            values.append(delta_m(metrics, {k: baselines[k] for k in keys}, LOWER_IS_BETTER_KEYS))
    used = sorted(k for k in baselines if k in row.metrics)
    if values:
        row.delta_m, row.delta_m_std = mean_std(values)
    elif used:  # no seed common to every task: Delta-m of the means
        row.delta_m = delta_m(row.metrics, {k: baselines[k] for k in used}, LOWER_IS_BETTER_KEYS)
    if used:
        row.delta_m_source, row.delta_m_keys = source, used
    return row


def compare_runs(
    work_dirs: Sequence[str | Path],
    baselines: Mapping[str, float] | None = None,
    strict: bool = False,
) -> list[Row]:
    """Load every work dir, group seeds, merge the single-task runs and fill in Delta-m."""
    groups = group_runs(load_runs(work_dirs, strict))
    single = [g for g in groups if len(g[0].tasks) == 1]
    multi = [g for g in groups if len(g[0].tasks) > 1]
    source = "--baselines"
    if baselines is None and single:
        baselines, source = single_task_baselines(single), "single-task runs"
    baselines = baselines or {}
    rows = [multitask_row(group, baselines, source) for group in multi]
    if single:
        rows.append(single_task_row(single, baselines, source))
    names = [row.name for row in rows]
    for row in rows:
        if names.count(row.name) > 1:
            logger.warning(
                "Several configs are named %r (method_name); they stay separate rows: %s",
                row.name,
                row.configs,
            )
    return rows
