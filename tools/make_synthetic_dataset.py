"""Write a small synthetic multi-task dataset in the exact on-disk layout of the real release.

python tools/make_synthetic_dataset.py data/demo_pascal --dataset pascal_context --num-train 64 \
    --num-val 16 --size 96 128 --seed 0
python tools/make_synthetic_dataset.py data/demo_nyud --dataset nyud --size 120 160
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool
from mtlora_vision.tasks import NUM_OUTPUTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Write a synthetic PASCAL_MT or NYUD_MT dataset.",
    )
    parser.add_argument("out", type=Path, help="dataset folder to create (must be new or empty)")
    parser.add_argument(
        "--dataset",
        choices=sorted(NUM_OUTPUTS),
        default="pascal_context",
        help="on-disk layout to write",
    )
    parser.add_argument("--num-train", type=int, default=16, help="training images")
    parser.add_argument("--num-val", type=int, default=8, help="validation images")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="default 375x500 / 480x640"
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from mtlora_vision.datasets.synthetic import make_synthetic_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = make_synthetic_dataset(
        args.out, args.dataset, args.num_train, args.num_val, args.size, args.seed
    )
    print(f"wrote {args.dataset} ({args.num_train} train, {args.num_val} val) to {out}")
    return out


if __name__ == "__main__":
    run_tool(main)
