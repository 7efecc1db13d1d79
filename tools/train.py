"""Train a multi-task model with mmengine's Runner.

python tools/train.py configs/mtlora_swin_demo.py
python tools/train.py CONFIG --resume                 # continue from the latest checkpoint
torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch
"""

from __future__ import annotations

import argparse
import logging

from mmengine.config import DictAction
from mmengine.runner import Runner

from mtlora_vision.allocator import tune_cpu_allocator
from mtlora_vision.engine.checkpoint import register_checkpoint_io
from mtlora_vision.engine.resume import latest_checkpoint_path
from mtlora_vision.engine.runtime import (
    finished_run_message,
    init_cpu_distributed,
    load_config,
    resolve_cpu_threads,
    resolve_launcher,
    resolve_precision,
    resolve_resume,
    resolve_work_dir,
    shutdown_distributed,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a multi-task dense prediction model.")
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from CKPT, or from the work dir's latest checkpoint if no path is given",
    )
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (fp16 on GPU, bf16 on CPU)"
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, e.g. train_dataloader.dataset.data_root=data/PASCAL_MT",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    tune_cpu_allocator()  # large CPU tensors without page faults on every step
    register_checkpoint_io()  # safe (allow-listed) checkpoint loading and atomic writes
    cfg = load_config(args.config, args.cfg_options)
    # work_dir is determined in this priority: CLI > segment in file > filename
    cfg.work_dir = resolve_work_dir(cfg, args.config, args.work_dir)
    resolve_precision(cfg, amp=args.amp)
    resolve_cpu_threads(cfg)
    resolve_launcher(cfg, args.launcher)
    init_cpu_distributed(args.launcher)
    finished = finished_run_message(cfg, resolve_resume(cfg, args.resume))
    if finished:  # resuming a finished run: say so, write nothing (no new log folder either)
        logging.getLogger(__name__).info(finished)
        shutdown_distributed()
        return
    runner = Runner.from_cfg(cfg)
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
    main()
