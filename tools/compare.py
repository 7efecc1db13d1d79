"""Compare finished runs: method, trainable parameters, final metrics and Delta-m of each.

    python tools/compare.py work_dirs/lora_demo work_dirs/bitfit_demo ... --out work_dirs/compare
    python tools/compare.py WORK_DIR... --baselines baselines.json   # {"semseg/mIoU": 67.21, ...}
    python tools/compare.py WORK_DIR... --title "Synthetic data: pipeline check only"

Per work dir (what mmengine 0.10 writes there): the newest ``<timestamp>/vis_data/scalars.json``
that holds a validation gives the final metrics (its last validation), and that run's
``vis_data/config.py`` the config; a ``metrics.json`` in the work dir (``tools/test.py CONFIG CKPT
--out WORK_DIR/metrics.json``) takes precedence over the logged validation. Trainable parameters
are counted on the model built from the config (backbone ``pretrained=None``).

Delta-m (MTLoRA's definition, ``mtlora_vision.evaluation.functional.delta_m``), in this order:
baselines from ``--baselines``; else single-task runs among the work dirs (every run with exactly
one task is a baseline; together they form one "single-task" row, Delta-m 0 by definition, whose
parameters are the sum of its runs'); else the ``multitask/delta_m`` the run logged.

Writes to ``--out``: ``comparison.md`` (method, config, trainable parameters, each task's Delta-m
metric, Delta-m), ``comparison.csv`` (every metric, parameter counts, config and work dir paths,
where the metrics and Delta-m came from) and ``pareto.png`` (trainable parameters, log scale,
against Delta-m, one labelled point per method).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
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
METRICS_FILE = "metrics.json"
SINGLE_TASK = "single-task"


@dataclass
class RunResult:
    """What one work dir (or the merged single-task runs) contributes to the comparison."""

    name: str
    work_dirs: list[str]
    configs: list[str]
    tasks: tuple[str, ...]
    trainable: int
    total: int
    metrics: dict[str, float]
    metrics_source: str
    delta_m: float = math.nan
    delta_m_source: str = "none"
    delta_m_keys: list[str] = field(default_factory=list)


def is_validation_record(record: Mapping[str, Any]) -> bool:
    """Whether a scalars.json record is a validation (metric keys ``task/name``, no loss/lr)."""
    return not (TRAIN_KEYS & set(record)) and any("/" in key for key in record)


def last_validation(scalars_file: Path) -> dict[str, float] | None:
    """Metrics of the last validation record of an mmengine scalars.json (JSON lines), or None."""
    found = None
    for line in scalars_file.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if is_validation_record(record):
            found = record
    if found is None:
        return None
    return {k: float(v) for k, v in found.items() if k not in NON_METRIC_KEYS}


def find_run(work_dir: Path) -> tuple[Path, dict[str, float], str]:
    """Return the config file, final metrics and their source of one work dir.

    Raises:
        FileNotFoundError: If the directory does not exist, or holds neither a validation in a
            ``<timestamp>/vis_data/scalars.json`` nor a ``metrics.json``, or no dumped config.
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
        raise FileNotFoundError(
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


def resolve_types(value: Any) -> Any:
    """Turn dotted ``type`` strings of a dumped config (``'pkg.mod.Class'``) back into objects."""
    if isinstance(value, Mapping):
        out = {k: resolve_types(v) for k, v in value.items()}
        kind = out.get("type")
        if isinstance(kind, str) and "." in kind:
            from mmengine.utils import get_object_from_string

            obj = get_object_from_string(kind)
            if obj is None:
                raise ValueError(f"Cannot import type {kind!r} named in the dumped config.")
            out["type"] = obj
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_types(v) for v in value)
    return value


def count_trainable(cfg: Config) -> tuple[int, int]:
    """Trainable and total parameter counts of the config's model (no pretrained weights)."""
    from mmengine.registry import MODELS

    model_cfg = resolve_types(cfg.model.to_dict())
    if "pretrained" in model_cfg.get("backbone", {}):
        model_cfg["backbone"]["pretrained"] = None
    model = MODELS.build(model_cfg)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def load_run(work_dir: str | Path) -> RunResult:
    """Collect one work dir: method name, tasks, parameter counts and final metrics."""
    work_dir = Path(work_dir)
    config_file, metrics, source = find_run(work_dir)
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_file))
    top_level = sorted(work_dir.glob("*.py"))
    name = cfg.get("method_name") or (top_level[0].stem if top_level else work_dir.name)
    trainable, total = count_trainable(cfg)
    return RunResult(
        name=str(name),
        work_dirs=[str(work_dir)],
        configs=[str(top_level[0] if top_level else config_file)],
        tasks=tuple(cfg.model.tasks),
        trainable=trainable,
        total=total,
        metrics=metrics,
        metrics_source=source,
    )


def merge_single_task(runs: Sequence[RunResult]) -> RunResult:
    """One row for all single-task runs: summed parameters, the union of their metrics."""
    metrics: dict[str, float] = {}
    for run in runs:
        metrics.update(run.metrics)
    return RunResult(
        name=SINGLE_TASK,
        work_dirs=[d for run in runs for d in run.work_dirs],
        configs=[c for run in runs for c in run.configs],
        tasks=tuple(t for run in runs for t in run.tasks),
        trainable=sum(run.trainable for run in runs),
        total=sum(run.total for run in runs),
        metrics=metrics,
        metrics_source="; ".join(run.metrics_source for run in runs),
    )


def single_task_baselines(runs: Sequence[RunResult]) -> dict[str, float]:
    """Delta-m baselines from one-task runs: each task's Delta-m key (e.g. ``semseg/mIoU``)."""
    baselines = {}
    for run in runs:
        (task,) = run.tasks
        key = DEFAULT_DELTA_M_KEYS.get(task)
        if key in run.metrics and math.isfinite(run.metrics[key]) and run.metrics[key] != 0:
            baselines[key] = run.metrics[key]
    return baselines


def apply_delta_m(run: RunResult, baselines: Mapping[str, float], source: str) -> None:
    """Set ``run.delta_m`` from the baselines of its tasks, else from its logged value."""
    keys = [DEFAULT_DELTA_M_KEYS[t] for t in run.tasks if t in DEFAULT_DELTA_M_KEYS]
    used = {k: baselines[k] for k in keys if k in baselines and k in run.metrics}
    if used:
        from mtlora_vision.evaluation.functional.delta_m import delta_m

        run.delta_m = delta_m(run.metrics, used, LOWER_IS_BETTER_KEYS)
        run.delta_m_source, run.delta_m_keys = source, sorted(used)
    elif "multitask/delta_m" in run.metrics:
        run.delta_m, run.delta_m_source = run.metrics["multitask/delta_m"], "logged"


def compare_runs(
    work_dirs: Sequence[str | Path], baselines: Mapping[str, float] | None = None
) -> list[RunResult]:
    """Load every work dir, merge the single-task runs into one row and fill in Delta-m."""
    loaded = [load_run(d) for d in work_dirs]
    single = [r for r in loaded if len(r.tasks) == 1]
    rows = [r for r in loaded if len(r.tasks) > 1]
    source = "--baselines"
    if baselines is None and single:
        baselines, source = single_task_baselines(single), "single-task runs"
    if single:
        merged = merge_single_task(single)
        if source == "single-task runs":
            merged.delta_m, merged.delta_m_source = 0.0, source
            merged.delta_m_keys = sorted(baselines or {})
        else:
            apply_delta_m(merged, baselines or {}, source)
        rows.append(merged)
    for run in rows:
        if run.name != SINGLE_TASK:
            apply_delta_m(run, baselines or {}, source)
    return rows


def metric_columns(rows: Sequence[RunResult]) -> list[str]:
    """The Delta-m key of every task that appears in a row, in the order of the task list."""
    tasks = {t for row in rows for t in row.tasks}
    return [key for task, key in DEFAULT_DELTA_M_KEYS.items() if task in tasks]


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def config_label(row: RunResult) -> str:
    """Short name of a row's config: the file name, or the count of merged single-task runs."""
    if len(row.configs) == 1:
        return f"`{Path(row.configs[0]).name}`"
    return f"{len(row.configs)} runs, one per task"


def format_markdown(rows: Sequence[RunResult]) -> str:
    """Markdown table: method, config, trainable parameters (M), task metrics, Delta-m."""
    columns = metric_columns(rows)
    names = [f"{k} {'↓' if k in LOWER_IS_BETTER_KEYS else '↑'}" for k in columns]
    header = ["method", "config", "trainable (M)", *names, "Δm (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [_fmt(row.metrics.get(key, math.nan)) for key in columns]
        trainable = f"{row.trainable / 1e6:.2f}"
        cells = [row.name, config_label(row), trainable, *values, _fmt(row.delta_m)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[RunResult], path: Path) -> None:
    """CSV with every metric of every row, parameter counts, Delta-m and where each came from."""
    metric_keys = sorted({k for row in rows for k in row.metrics})
    fixed = ["method", "tasks", "trainable", "total", "delta_m", "delta_m_source", "delta_m_keys"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*fixed, *metric_keys, "configs", "work_dirs", "metrics_source"])
        for row in rows:
            writer.writerow(
                [
                    row.name,
                    " ".join(row.tasks),
                    row.trainable,
                    row.total,
                    "" if math.isnan(row.delta_m) else f"{row.delta_m:.4f}",
                    row.delta_m_source,
                    " ".join(row.delta_m_keys),
                    *[row.metrics.get(k, "") for k in metric_keys],
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


def plot_pareto(rows: Sequence[RunResult], path: Path, title: str | None = None) -> int:
    """Draw trainable parameters (log x) against Delta-m, one labelled point per row.

    Args:
        rows: The comparison rows.
        path: PNG file to write.
        title: Plot title (e.g. what data the runs saw), or None.

    Returns:
        The number of points drawn (rows without Delta-m are left out).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not math.isnan(r.delta_m)]
    fig, ax = plt.subplots(figsize=(6, 4))
    points = [(float(r.trainable), r.delta_m) for r in shown]
    for row, (x, y) in zip(shown, points, strict=True):
        ax.scatter(x, y)
        ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("Δm (%)")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.grid(True, which="both", lw=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(shown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare runs: parameters, metrics, Delta-m.")
    parser.add_argument("work_dirs", nargs="+", help="work dirs of finished runs")
    parser.add_argument("--out", default="work_dirs/compare", help="output directory")
    parser.add_argument("--baselines", help="JSON file: single-task value per metric key")
    parser.add_argument(
        "--title", help="caption for the table and title of the plot (e.g. 'synthetic data')"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[RunResult]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    baselines = None
    if args.baselines:
        path = Path(args.baselines)
        if not path.is_file():
            raise FileNotFoundError(f"Baselines file {str(path)!r} does not exist.")
        baselines = {k: float(v) for k, v in json.loads(path.read_text()).items()}
    rows = compare_runs(args.work_dirs, baselines)
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
