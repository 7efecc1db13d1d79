"""Train a multi-task model with mmengine's Runner.

python tools/train.py configs/mtlora_swin_demo.py
python tools/train.py CONFIG --data-root /data/PASCAL_MT   # every loader reads this folder
python tools/train.py CONFIG --resume                 # continue from the latest checkpoint
torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch
"""

from __future__ import annotations

import argparse
import logging

from mtlora_vision.cli import (
    DefaultsHelpFormatter,
    add_cfg_options,
    add_launcher,
    parse_cfg_options,
    run_tool,
)
from mtlora_vision.engine.precision import add_precision_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Train a multi-task dense prediction model.",
    )
    parser.add_argument("config", help="config file")
    parser.add_argument(
        "--work-dir", help="where logs and checkpoints go (default: work_dirs/CONFIG_NAME)"
    )
    parser.add_argument(
        "--data-root", help="dataset folder for every loader (sets the config's data_root)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from CKPT, or from the work dir's latest checkpoint if no path is given",
    )
    add_precision_argument(parser)
    parser.add_argument(
        "--seed",
        type=int,
        help="random seed (default: the config's randomness.seed); --resume keeps the checkpoint's",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (randomness.deterministic; slower on GPU)",
    )
    add_cfg_options(parser)
    add_launcher(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.cfg_options = parse_cfg_options(args.cfg_options)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and typos answer at once
    from mtlora_vision.engine.run_logging import package_logs_to_run

    with package_logs_to_run():  # the package's messages go to the run's log, once per run
        train(args)


def train(args: argparse.Namespace) -> None:
    from mtlora_vision.allocator import set_up_allocator
    from mtlora_vision.engine.checkpoint import register_checkpoint_io
    from mtlora_vision.engine.data_root import apply_data_root
    from mtlora_vision.engine.precision import (
        apply_precision,
        detect_precision,
        requested_precision,
    )
    from mtlora_vision.engine.resume import latest_checkpoint_path
    from mtlora_vision.engine.runner import MultiTaskRunner
    from mtlora_vision.engine.runtime import (
        checkpointing_requested,
        finished_run_message,
        init_cpu_distributed,
        load_config,
        resolve_cpu_threads,
        resolve_launcher,
        resolve_randomness,
        resolve_resume,
        resolve_work_dir,
        shutdown_distributed,
    )

    register_checkpoint_io()  # safe (allow-listed) checkpoint loading and atomic writes
    cfg = load_config(args.config, args.cfg_options)
    # large CPU tensors without page faults on every step, unless the run asks for memory first
    checkpointing = checkpointing_requested(cfg)
    cfg.cpu_allocator = set_up_allocator(checkpointing)
    apply_data_root(cfg, args.data_root, args.cfg_options)
    # work_dir is determined in this priority: CLI > segment in file > filename
    cfg.work_dir = resolve_work_dir(cfg, args.config, args.work_dir)
    apply_precision(cfg, detect_precision(requested_precision(args)))
    resolve_randomness(cfg, args.seed, args.deterministic)
    resolve_cpu_threads(cfg)
    resolve_launcher(cfg, args.launcher)
    init_cpu_distributed(args.launcher)
    finished = finished_run_message(cfg, resolve_resume(cfg, args.resume))
    if finished:  # resuming a finished run: say so, write nothing (no new log folder either)
        logging.getLogger("mtlora_vision.tools.train").info(finished)
        shutdown_distributed()
        return
    runner = MultiTaskRunner.from_cfg(cfg)
    try:
        runner.train()
    except FloatingPointError:  # non-finite loss, weights or predictions: say where to resume
        last = latest_checkpoint_path(cfg.work_dir)
        runner.logger.error(
            "Training stopped on non-finite values (see the error below). Latest checkpoint, "
            f"written before them: {last or 'none'}; fix the cause (e.g. a lower learning rate) "
            "and run again with --resume."
        )
        raise
    shutdown_distributed()


if __name__ == "__main__":
    run_tool(main, preload_allocator=True)
