"""Argument helpers shared by the command-line tools; light enough for a fast ``--help``.

Tools parse their arguments before importing torch or mmengine, so ``--help`` and argument errors
answer at once. ``--cfg-options`` is therefore collected as plain ``KEY=VALUE`` strings and
turned into a dict by mmengine's own ``DictAction`` once the arguments are known.
"""

from __future__ import annotations

import argparse
from typing import Any

CFG_OPTIONS_HELP = (
    "override config entries as KEY=VALUE, e.g. train_cfg.max_epochs=10 data_root=data/PASCAL_MT; "
    "lists as KEY=[a,b] or KEY=a,b"
)


def add_cfg_options(parser: argparse.ArgumentParser, help: str = CFG_OPTIONS_HELP) -> None:
    """Add ``--cfg-options KEY=VALUE ...`` (parsed later by :func:`parse_cfg_options`)."""
    parser.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", help=help)


def parse_cfg_options(values: list[str] | None) -> dict[str, Any] | None:
    """``KEY=VALUE`` strings -> dict, with mmengine's ``DictAction`` rules (lists, tuples, ...)."""
    if not values:
        return None
    from mmengine.config import DictAction

    namespace = argparse.Namespace()
    DictAction(option_strings=["--cfg-options"], dest="cfg_options")(None, namespace, values)
    return dict(namespace.cfg_options)


def add_launcher(parser: argparse.ArgumentParser) -> None:
    """Add ``--launcher`` and the ``--local-rank`` that older launchers pass."""
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm"],
        default="none",
        help="how the processes were started: none (one process), pytorch (torchrun), slurm",
    )
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
