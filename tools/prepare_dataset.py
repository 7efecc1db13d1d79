"""Prepare a multi-task dataset: unpack (or download, only when asked) and verify it.

python tools/prepare_dataset.py pascal_context --root data/PASCAL_MT --archive PASCAL_MT.tgz
python tools/prepare_dataset.py pascal_context --root data/PASCAL_MT --download
python tools/prepare_dataset.py nyud --root data/NYUDv2 --check          # only verify
python tools/prepare_dataset.py nyud --root data/NYUDv2 --check --quick  # existence only

Verification lists every missing, unreadable or mis-sized file with its path, and split counts that
differ from the release (4,998/5,105 for PASCAL_MT, 795/654 for NYUD_MT). The exit code is non-zero
when a file is missing, unreadable or mis-sized; split sizes that differ (a subset, or synthetic
data) are a warning, and an error with ``--strict``. A download resumes an interrupted one (HTTP
Range).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool
from mtlora_vision.tasks import NUM_OUTPUTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description="Unpack and verify a multi-task dataset."
    )
    parser.add_argument("dataset", choices=sorted(NUM_OUTPUTS), help="which dataset")
    parser.add_argument(
        "--root", type=Path, required=True, help="dataset folder to create or check"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", type=Path, help="local archive to unpack into --root")
    source.add_argument(
        "--download",
        action="store_true",
        help="fetch the public archive next to --root (resumable)",
    )
    source.add_argument("--check", action="store_true", help="only verify --root (the default)")
    parser.add_argument(
        "--quick", action="store_true", help="check that files exist, do not decode"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="split sizes that differ from the release are an error (default: a warning)",
    )
    parser.add_argument(
        "--all", action="store_true", help="list every problem (default: 20 per kind)"
    )
    parser.add_argument("--url", help="override the download URL")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mtlora_vision.datasets.download import ARCHIVES, download, extract_archive
    from mtlora_vision.datasets.prepare import verify_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    progress = not args.no_progress
    archive = args.archive
    if args.download:
        name, url = ARCHIVES[args.dataset]
        archive = download(args.url or url, args.root.parent / name, progress=progress)
    if archive is not None:
        if args.root.exists() and any(args.root.iterdir()):
            print(f"{args.root} already exists; verifying it instead of unpacking {archive}.")
        else:
            extract_archive(archive, args.root, progress=progress)
    report = verify_dataset(args.dataset, args.root, quick=args.quick, progress=progress)
    print(report.format(limit=None if args.all else 20, strict=args.strict))
    return 0 if report.passed(strict=args.strict) else 1


if __name__ == "__main__":
    run_tool(main)
