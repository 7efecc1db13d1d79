"""Compare finished runs: method, trainable parameters, final metrics and Delta-m, over seeds.

    python tools/compare.py work_dirs/lora_demo work_dirs/bitfit_demo ... --out work_dirs/compare
    python tools/compare.py WORK_DIR... --baselines baselines.json   # {"semseg/mIoU": 67.21, ...}
    python tools/compare.py WORK_DIR... --title "Synthetic data: pipeline check only"
    python tools/compare.py work_dirs/*_seed* --strict   # every work dir must hold a finished run

What is read from a work dir, and when a run counts as unfinished (skipped with a warning;
``--strict`` makes it an error): :mod:`mtlora_vision.comparison.runs`. How runs become rows over
seeds and where Delta-m comes from (``--baselines``, else single-task runs among the work dirs,
else the logged ``multitask/delta_m``): :mod:`mtlora_vision.comparison.rows`. A Delta-m over fewer
tasks than the row has is marked in its cell (``(1/5 tasks)``), a logged one ``(logged)``.

Writes to ``--out``: ``comparison.md`` (method, config, seeds, trainable parameters, each task's
Delta-m metric, Delta-m), ``comparison.csv`` (every metric's mean and std, parameter counts, seeds,
config and work dir paths, where the metrics and Delta-m came from) and ``pareto.png`` (trainable
parameters, log scale, against Delta-m, one labelled point per row with its standard deviation as
an error bar; rows without Delta-m are named in a note).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool
from mtlora_vision.comparison import Row, compare_runs, format_markdown, plot_pareto, write_csv

logger = logging.getLogger("compare")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Compare runs: parameters, metrics and Delta-m, mean ± std over seeds.",
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # warnings only
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
    run_tool(main)
