"""Evaluate a trained multi-task model with mmengine's Runner.

python tools/test.py CONFIG CHECKPOINT [--out metrics.json] [--out-dir DIR] [--show-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os.path as osp

from mmengine.config import DictAction
from mmengine.runner import Runner

from mtlora_vision.engine.checkpoint import register_checkpoint_io
from mtlora_vision.engine.runtime import (
    init_cpu_distributed,
    load_config,
    resolve_launcher,
    resolve_work_dir,
    shutdown_distributed,
)
from mtlora_vision.engine.visualization_hook import PredictionWriterHook


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a multi-task dense prediction model.")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="where the test logs go")
    parser.add_argument("--out", help="write the metrics as one JSON object to this file")
    parser.add_argument("--out-dir", help="save per-task predictions as PNG files here")
    parser.add_argument("--show-dir", help="save colourised input/target/prediction pictures here")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config entries"
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def format_table(metrics: dict[str, float]) -> str:
    """Return the metrics as a two-column text table, grouped by task prefix."""
    width = max((len(key) for key in metrics), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ---------"]
    lines += [f"{key:<{width}}  {value:9.4f}" for key, value in sorted(metrics.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"Checkpoint {args.checkpoint!r} does not exist.")
    register_checkpoint_io()  # safe (allow-listed) checkpoint loading and atomic writes
    cfg = load_config(args.config, args.cfg_options)
    cfg.work_dir = resolve_work_dir(cfg, args.config, args.work_dir)
    resolve_launcher(cfg, args.launcher)
    init_cpu_distributed(args.launcher)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    runner = Runner.from_cfg(cfg)
    if args.out_dir or args.show_dir:
        runner.register_hook(PredictionWriterHook(out_dir=args.out_dir, show_dir=args.show_dir))
    metrics = {key: float(value) for key, value in runner.test().items()}
    if runner.rank == 0:
        print(format_table(metrics))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(metrics, handle, indent=2, sort_keys=True)
    shutdown_distributed()
    return metrics


if __name__ == "__main__":
    main()
