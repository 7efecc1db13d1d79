"""Argument helpers shared by the command-line tools; light enough for a fast ``--help``.

Tools parse their arguments before importing torch or mmengine, so ``--help`` and argument errors
answer at once. ``--cfg-options`` is therefore collected as plain ``KEY=VALUE`` strings and
turned into a dict by mmengine's own ``DictAction`` once the arguments are known.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends with ``(default: X)`` where an option has a default its text does not name.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter`` it says nothing for ``None`` and ``False``
    (no default, or a flag that is off) and leaves texts that already speak of their default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or any(default is unset for unset in (None, False, argparse.SUPPRESS))
            or (
                not action.option_strings
                and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
            )
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else "%(default)s"
        return f"{text} (default: {shown})"


def cfg_options_help(example: str = "train_cfg.max_epochs=10") -> str:
    """``--cfg-options`` help with ``example`` as the first override shown."""
    return (
        f"override config entries as KEY=VALUE, e.g. {example} data_root=data/PASCAL_MT; "
        "lists as KEY=[a,b] or KEY=a,b"
    )


def add_cfg_options(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """Add ``--cfg-options KEY=VALUE ...`` (parsed later by :func:`parse_cfg_options`).

    ``help`` defaults to :func:`cfg_options_help`.
    """
    parser.add_argument(
        "--cfg-options", nargs="+", metavar="KEY=VALUE", help=help or cfg_options_help()
    )


def add_step_options(
    parser: argparse.ArgumentParser, batch_size: int, iters: int, measured: str
) -> None:
    """Add ``--img-size``, ``--batch-size``, ``--iters`` and ``--warmup`` of a timing tool.

    Args:
        parser: The tool's parser.
        batch_size: Default images per step.
        iters: Default measured steps per variant.
        measured: How the steps are measured, e.g. ``"timed"``; warm-up steps are
            ``"un" + measured``.

    The defaults appear in ``--help`` through the tools' :class:`DefaultsHelpFormatter`.
    """
    parser.add_argument(
        "--img-size", type=int, default=448, help="square input side, a multiple of 32"
    )
    parser.add_argument("--batch-size", type=int, default=batch_size, help="images per step")
    parser.add_argument("--iters", type=int, default=iters, help=f"{measured} steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help=f"un{measured} steps per variant")


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


def run_tool(main: Callable[[], Any], preload_allocator: bool = False) -> NoReturn:
    """Run a tool's ``main`` and exit; an input error ends it with its message alone.

    With ``preload_allocator`` (the tools that run models), the process first re-executes itself
    with mimalloc preloaded where ``MTLORA_ALLOCATOR`` asks for it
    (:func:`mtlora_vision.allocator.preload_mimalloc`; ``auto``, the default, where installed).

    An error that marks the user's input as wrong (:class:`mtlora_vision.errors.InputError`, or a
    missing file or folder) is printed as ``<tool>: error: <message>`` with exit status 2, like
    argparse's own errors, instead of a traceback through mmengine. Other errors keep their
    traceback; ``MTLORA_TRACEBACK=1`` shows it for input errors too. An integer that ``main``
    returns is the exit status; anything else it returns (e.g. ``tools/test.py``'s metrics) means 0.
    """
    try:
        if preload_allocator:
            from mtlora_vision.allocator import preload_mimalloc

            preload_mimalloc()  # returns unless it re-executes; before any work
        status = main()
    except Exception as err:
        if not _is_input_error(err) or os.environ.get("MTLORA_TRACEBACK") == "1":
            raise
        prog = os.path.basename(sys.argv[0]) or "mtlora_vision"
        sys.stderr.write(f"{prog}: error: {err}\n(MTLORA_TRACEBACK=1 shows where it was raised)\n")
        sys.exit(2)
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)


def _is_input_error(err: BaseException) -> bool:
    from mtlora_vision.errors import InputError

    return isinstance(err, InputError | FileNotFoundError | NotADirectoryError)
