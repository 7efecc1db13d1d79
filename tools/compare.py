"""Compare finished runs: method, trainable parameters, final metrics and Delta-m, over seeds.

    python tools/compare.py work_dirs/lora_demo work_dirs/bitfit_demo ... --out work_dirs/compare
    python tools/compare.py WORK_DIR... --baselines baselines.json   # {"semseg/mIoU": 67.21, ...}
    python tools/compare.py WORK_DIR... --title "Synthetic data: pipeline check only"
    python tools/compare.py work_dirs/*_seed* --strict   # every work dir must hold a finished run

Per work dir (what mmengine 0.10 writes there): the newest ``<timestamp>/vis_data/scalars.json``
that holds a validation gives the final metrics (its last validation), and that run's
``vis_data/config.py`` the config; a ``metrics.json`` in the work dir (``tools/test.py CONFIG CKPT
--out WORK_DIR/metrics.json``) takes precedence over the logged validation. Trainable parameters
are counted on the model built from the config (backbone ``pretrained=None``). A work dir without
metrics, or whose last validation comes before the end of its schedule (a failed or killed run), is
skipped with a warning; ``--strict`` makes it an error.

Seeds: runs whose dumped configs are equal up to ``randomness.seed`` (and the work dir, launcher
and resume flag) are one row; the seed is the dumped ``randomness.seed``. Each metric and Delta-m is
shown as mean ± sample standard deviation over the row's runs, with the number of runs.

Delta-m (MTLoRA's definition, ``mtlora_vision.evaluation.functional.delta_m``), per run, in this
order: baselines from ``--baselines``; else single-task runs among the work dirs (every run with
exactly one task is a baseline, averaged over its seeds; together they form one "single-task" row,
Delta-m 0 by definition, whose parameters are the sum of one model per task); else the
``multitask/delta_m`` the run logged. A Delta-m over fewer tasks than the row has is marked in its
cell (``(1/5 tasks)``), a logged one ``(logged)``.

Writes to ``--out``: ``comparison.md`` (method, config, seeds, trainable parameters, each task's
Delta-m metric, Delta-m), ``comparison.csv`` (every metric's mean and std, parameter counts, seeds,
config and work dir paths, where the metrics and Delta-m came from) and ``pareto.png`` (trainable
parameters, log scale, against Delta-m, one labelled point per row with its standard deviation as
an error bar; rows without Delta-m are named in a note).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlora_vision.tasks import DEFAULT_DELTA_M_KEYS, LOWER_IS_BETTER_KEYS

if TYPE_CHECKING:  # mmengine and torch are imported where used: --help answers without them
    from mmengine.config import Config

logger = logging.getLogger("compare")

#: Keys of a training record in scalars.json; a validation record has none of them.
TRAIN_KEYS = frozenset({"lr", "base_lr", "loss"})
#: Bookkeeping keys of a validation record, not metrics.
NON_METRIC_KEYS = frozenset({"step", "data_time", "time", "epoch", "iter"})
#: Top-level config keys that differ between runs of one experiment (besides randomness.seed).
RUN_ONLY_KEYS = frozenset({"work_dir", "launcher", "resume"})
METRICS_FILE = "metrics.json"
SINGLE_TASK = "single-task"


class NoResultError(FileNotFoundError):
    """A work dir holds no final metrics (a failed or unfinished run)."""


@dataclass
class RunResult:
    """One work dir: its config, seed, parameter counts and final metrics."""

    name: str
    work_dir: str
    config: str
    tasks: tuple[str, ...]
    trainable: int
    total: int
    metrics: dict[str, float]
    metrics_source: str
    seed: int | None = None
    group_key: str = ""
    delta_m: float = math.nan


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
        return [run.work_dir for run in self.runs]

    @property
    def configs(self) -> list[str]:
        return list(dict.fromkeys(run.config for run in self.runs))

    @property
    def metrics_source(self) -> str:
        return "; ".join(run.metrics_source for run in self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), std


def is_validation_record(record: Mapping[str, Any]) -> bool:
    """Whether a scalars.json record is a validation (metric keys ``task/name``, no loss/lr)."""
    return not (TRAIN_KEYS & set(record)) and any("/" in key for key in record)


def last_validation(scalars_file: Path) -> dict[str, float] | None:
    """Metrics (and ``step``) of the last validation record of an mmengine scalars.json, or None."""
    found = None
    for line in scalars_file.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if is_validation_record(record):
            found = record
    if found is None:
        return None
    kept = {k: float(v) for k, v in found.items() if k not in NON_METRIC_KEYS}
    if "step" in found:
        kept["step"] = float(found["step"])
    return kept


def find_run(work_dir: Path) -> tuple[Path, dict[str, float], str]:
    """Return the config file, final metrics and their source of one work dir.

    The metrics of a logged validation carry its ``step`` (epoch or iteration) under ``"step"``.

    Raises:
        FileNotFoundError: If the directory does not exist, or holds no dumped config.
        NoResultError: If it holds neither a validation in a ``<timestamp>/vis_data/scalars.json``
            nor a ``metrics.json``.
    """
    if not work_dir.is_dir():
        raise FileNotFoundError(f"Work dir {str(work_dir)!r} does not exist.")
    metrics, source, config = None, "", None
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json"), reverse=True):
        metrics = last_validation(scalars)
        if metrics is not None:
            source, config = str(scalars), scalars.parent / "config.py"
            break
    test_out = work_dir / METRICS_FILE
    if test_out.is_file():
        metrics = {k: float(v) for k, v in json.loads(test_out.read_text()).items()}
        source = str(test_out)
    if metrics is None:
        raise NoResultError(
            f"No metrics in work dir {str(work_dir)!r}: no validation in any "
            f"<timestamp>/vis_data/scalars.json and no {METRICS_FILE}. Train with validation "
            f"(tools/train.py) or run tools/test.py CONFIG CKPT --out {work_dir / METRICS_FILE}."
        )
    if config is None or not config.is_file():
        dumped = sorted(work_dir.glob("*.py"), key=lambda p: p.stat().st_mtime)
        dumped += sorted(work_dir.glob("*/vis_data/config.py"))
        if not dumped:
            raise FileNotFoundError(
                f"No config in work dir {str(work_dir)!r} (looked for <work_dir>/*.py and "
                "<timestamp>/vis_data/config.py, which tools/train.py writes)."
            )
        config = dumped[-1]
    return config, metrics, source


def count_trainable(cfg: Config) -> tuple[int, int]:
    """Trainable and total parameter counts of the config's model (no pretrained weights)."""
    from mmengine.registry import MODELS

    # Dumped configs name types by dotted path; mmengine's registry and our builders import them.
    model_cfg = cfg.model.to_dict()
    if "pretrained" in model_cfg.get("backbone", {}):
        model_cfg["backbone"]["pretrained"] = None
    model = MODELS.build(model_cfg)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def final_step(cfg: Config) -> int | None:
    """The step of a finished run's last validation: ``max_epochs`` (or ``max_iters``).

    mmengine's train loops validate at the end of training unless ``val_begin`` comes after it;
    then (or without a schedule in the config) there is no final validation to expect: None.
    """
    train_cfg = cfg.get("train_cfg") or {}
    value = train_cfg.get("max_epochs", train_cfg.get("max_iters"))
    if value is None or train_cfg.get("val_begin", 1) > value:
        return None
    return int(value)


def group_key(cfg: Config) -> str:
    """The config as canonical JSON without what differs between seeds of one experiment."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS}
    randomness = dict(data.get("randomness") or {})
    randomness.pop("seed", None)
    data["randomness"] = randomness
    return json.dumps(data, sort_keys=True, default=repr)


def load_run(work_dir: str | Path) -> RunResult:
    """Collect one work dir: method name, tasks, seed, parameter counts and final metrics.

    Raises:
        NoResultError: If the work dir has no metrics, or its last logged validation comes before
            the end of the schedule (the run stopped early).
    """
    work_dir = Path(work_dir)
    config_file, metrics, source = find_run(work_dir)
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_file))
    step, final = metrics.pop("step", None), final_step(cfg)
    if step is not None and final is not None and step < final:
        raise NoResultError(
            f"Run in {str(work_dir)!r} stopped early: its last validation is at step {step:g} of "
            f"{final} ({source}). Resume it (tools/train.py CONFIG --resume) or leave it out."
        )
    top_level = sorted(work_dir.glob("*.py"))
    name = cfg.get("method_name") or (top_level[0].stem if top_level else work_dir.name)
    trainable, total = count_trainable(cfg)
    seed = (cfg.get("randomness") or {}).get("seed")
    return RunResult(
        name=str(name),
        work_dir=str(work_dir),
        config=str(top_level[0] if top_level else config_file),
        tasks=tuple(cfg.model.tasks),
        trainable=trainable,
        total=total,
        metrics=metrics,
        metrics_source=source,
        seed=None if seed is None else int(seed),
        group_key=group_key(cfg),
    )


def load_runs(work_dirs: Sequence[str | Path], strict: bool = False) -> list[RunResult]:
    """Load every work dir; one without a final result is skipped with a warning unless ``strict``.

    Raises:
        NoResultError: With ``strict``, for the first work dir without a final result; without,
            if no work dir has one.
    """
    runs, skipped = [], []
    for work_dir in work_dirs:
        try:
            runs.append(load_run(work_dir))
        except NoResultError as err:
            if strict:
                raise
            logger.warning("Skipped: %s (--strict makes this an error)", err)
            skipped.append(str(work_dir))
    if not runs:
        raise NoResultError(f"None of the {len(skipped)} work dir(s) holds a finished run.")
    return runs


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare runs: parameters, metrics and Delta-m, mean ± std over seeds."
    )
    parser.add_argument(
        "work_dirs",
        nargs="+",
        help="work dirs of finished runs; runs of one config that differ only in "
        "randomness.seed become one row",
    )
    parser.add_argument("--out", default="work_dirs/compare", help="output directory")
    parser.add_argument("--baselines", help="JSON file: single-task value per metric key")
    parser.add_argument(
        "--title", help="caption for the table and title of the plot (e.g. 'synthetic data')"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="a work dir without final metrics (failed or stopped run) is an error, not skipped",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    baselines = None
    if args.baselines:
        path = Path(args.baselines)
        if not path.is_file():
            raise FileNotFoundError(f"Baselines file {str(path)!r} does not exist.")
        baselines = {k: float(v) for k, v in json.loads(path.read_text()).items()}
    rows = compare_runs(args.work_dirs, baselines, strict=args.strict)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_markdown(rows)
    (out / "comparison.md").write_text(f"{args.title}\n\n{table}" if args.title else table)
    write_csv(rows, out / "comparison.csv")
    if plot_pareto(rows, out / "pareto.png", args.title) == 0:
        logger.warning("No run has a Delta-m; pareto.png has no points. Add single-task runs.")
    print(table)
    print(f"Wrote comparison.md, comparison.csv and pareto.png to {out}")
    return rows


if __name__ == "__main__":
    main()
