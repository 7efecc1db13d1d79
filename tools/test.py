"""Evaluate a trained multi-task model with mmengine's Runner.

python tools/test.py CONFIG CHECKPOINT [--out metrics.json] [--out-dir DIR] [--show-dir DIR]

Shows a progress bar, prints a per-task metrics table, and with ``--out`` writes the metrics as one
JSON object. ``--out-dir`` saves each task's prediction per image at the original image size in
the files the ASTMT / MTI-Net offline evaluation reads: ``<task>/<id>.png`` (class ids; 255 * p
for sal and edge; RGB 255 * (n + 1) / 2 for normals) and ``depth/<id>.mat`` (key ``depth``).
The test's log and config dump go to their own ``WORK_DIR/<timestamp>/`` folder; the training
run's files in the work dir are left as they are.
"""

from __future__ import annotations

import argparse
import json

from mtlora_vision.cli import (
    DefaultsHelpFormatter,
    add_cfg_options,
    add_launcher,
    cfg_options_help,
    parse_cfg_options,
    run_tool,
)
from mtlora_vision.engine.precision import add_precision_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Evaluate a multi-task dense prediction model.",
    )
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument(
        "--work-dir",
        help="work dir; the test's log goes to WORK_DIR/<timestamp>/ (default: the config's)",
    )
    parser.add_argument(
        "--data-root", help="dataset folder for every loader (sets the config's data_root)"
    )
    parser.add_argument("--out", help="write the metrics as one JSON object to this file")
    parser.add_argument(
        "--out-dir",
        help="save per-task predictions here at the original image size: <task>/<id>.png, and "
        "depth/<id>.mat for depth (the offline evaluators' formats)",
    )
    parser.add_argument(
        "--show-dir", help="save labelled input / ground truth / prediction figures here"
    )
    add_precision_argument(parser)
    add_cfg_options(parser, help=cfg_options_help("test_dataloader.batch_size=1"))
    add_launcher(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.cfg_options = parse_cfg_options(args.cfg_options)
    return args


def format_table(metrics: dict[str, float]) -> str:
    """Return the metrics as a task / metric / value / unit table, tasks in the metric's order."""
    from mtlora_vision.evaluation.units import metric_unit  # heavy package: not at --help time

    rows: dict[str, list[tuple[str, float]]] = {}
    for key, value in metrics.items():
        task, _, name = key.partition("/")
        rows.setdefault(task, []).append((name or task, value))
    task_w = max([len("task"), *(len(t) for t in rows)])
    name_w = max([len("metric"), *(len(n) for r in rows.values() for n, _ in r)])
    lines = [f"{'task':<{task_w}}  {'metric':<{name_w}}  {'value':>9}  unit"]
    lines.append(f"{'-' * task_w}  {'-' * name_w}  {'-' * 9}  ----")
    for task, entries in rows.items():
        for index, (name, value) in enumerate(entries):
            shown = task if index == 0 else ""
            unit = metric_unit(f"{task}/{name}")
            lines.append(f"{shown:<{task_w}}  {name:<{name_w}}  {value:9.4f}  {unit}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)  # before the heavy imports: --help and typos answer at once
    from mtlora_vision.engine.run_logging import package_logs_to_run

    with package_logs_to_run():  # the package's messages go to the run's log, once per run
        return run_test(args)


def run_test(args: argparse.Namespace) -> dict[str, float]:
    from mtlora_vision.allocator import set_up_allocator
    from mtlora_vision.engine.checkpoint import register_checkpoint_io
    from mtlora_vision.engine.data_root import apply_data_root
    from mtlora_vision.engine.precision import (
        apply_precision,
        detect_precision,
        requested_precision,
    )
    from mtlora_vision.engine.progress_hook import ProgressBarHook
    from mtlora_vision.engine.runner import TestRunner, drop_on_console, prepare_test_config
    from mtlora_vision.engine.runtime import (
        init_cpu_distributed,
        load_config,
        resolve_cpu_threads,
        resolve_launcher,
        resolve_work_dir,
        shutdown_distributed,
    )
    from mtlora_vision.engine.visualization_hook import PredictionWriterHook
    from mtlora_vision.safe_load import check_checkpoint_integrity

    allocator = set_up_allocator()  # large CPU tensors without page faults on every step
    check_checkpoint_integrity(args.checkpoint)  # missing or damaged: say so before any work
    register_checkpoint_io()  # safe (allow-listed) checkpoint loading and atomic writes
    cfg = load_config(args.config, args.cfg_options)
    cfg.cpu_allocator = allocator
    apply_data_root(cfg, args.data_root, args.cfg_options)
    cfg.work_dir = resolve_work_dir(cfg, args.config, args.work_dir)
    apply_precision(cfg, detect_precision(requested_precision(args)))
    resolve_cpu_threads(cfg)
    resolve_launcher(cfg, args.launcher)
    init_cpu_distributed(args.launcher)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    prepare_test_config(cfg)  # no TensorBoard run, no training hooks' side effects
    runner = TestRunner.from_cfg(cfg)
    drop_on_console(runner.logger, ("Epoch(test)",))  # the table below, with units; the log has it
    runner.register_hook(ProgressBarHook())
    if args.out_dir or args.show_dir:
        runner.register_hook(PredictionWriterHook(out_dir=args.out_dir, show_dir=args.show_dir))
    metrics = {key: float(value) for key, value in runner.test().items()}
    if runner.rank == 0:
        print(format_table(metrics))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(metrics, handle, indent=2, sort_keys=True)
            print(f"Metrics written to {args.out}")
    shutdown_distributed()
    return metrics


if __name__ == "__main__":
    run_tool(main, preload_allocator=True)
