"""The package's log messages go through the run's logger (mmengine ``MMLogger``).

Library modules log with ``logging.getLogger(__name__)`` (names under ``mtlora_vision``). While a
tool runs inside :func:`package_logs_to_run`, those records are forwarded to the logger of the
current mmengine run, so they reach its console and its ``.log`` file, formatted like mmengine's
own lines and shown once per run: ``MMLogger`` prints only errors on ranks other than 0 and writes
the file on rank 0. Records logged before the Runner exists (resume source, precision, threads)
are held and replayed when it builds its logger; if it never does, they go to stderr at the end.

Outside that context (the Python API, tests) the package logs through standard ``logging``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PACKAGE = "mtlora_vision"

#: Warnings that mmengine's own code raises about APIs it calls itself (``CheckpointHook`` asks
#: ``FileClient`` for a backend on every run); nothing a user of this package can change.
MMENGINE_SELF_DEPRECATIONS: tuple[str, ...] = (
    '"FileClient" will be deprecated in future',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)


#: mmengine lines kept out of the console (the ``.log`` file keeps them): ``LoggerHook`` repeats the
#: experiment name at the end of every epoch, and the start-up summary already names the log folder.
CONSOLE_DROPS: tuple[str, ...] = ("Exp name: ",)


class RunLogBridge(logging.Handler):
    """Forward records to a run's logger; hold them until that logger exists."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.target: logging.Logger | None = None
        self.pending: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record``, or keep it until :meth:`attach`."""
        if self.target is None:
            self.pending.append(record)
        else:
            self.target.handle(record)

    def attach(self, target: logging.Logger) -> None:
        """Send every later record to ``target``, starting with the held ones."""
        self.target = target
        pending, self.pending = self.pending, []
        for record in pending:
            target.handle(record)


_ACTIVE: list[RunLogBridge] = []


@contextmanager
def package_logs_to_run(level: int = logging.INFO) -> Iterator[RunLogBridge]:
    """Route the package's records to the run's logger for the duration of the block.

    Args:
        level: Lowest level of package records that are kept.
    """
    bridge = RunLogBridge()
    package, root = logging.getLogger(PACKAGE), logging.getLogger()
    saved_level = package.level
    # Records still propagate (to handlers the caller installed, e.g. pytest's), but a root
    # without handlers must not print them a second time through logging's last resort.
    silent_root = logging.NullHandler() if not root.handlers else None
    if silent_root is not None:
        root.addHandler(silent_root)
    package.addHandler(bridge)
    package.setLevel(level)
    _ACTIVE.append(bridge)
    try:
        yield bridge
    finally:
        _ACTIVE.remove(bridge)
        package.removeHandler(bridge)
        package.setLevel(saved_level)
        if silent_root is not None:
            root.removeHandler(silent_root)
        if bridge.pending:  # no run logger was ever built: do not lose what was said
            fallback = logging.StreamHandler(sys.stderr)
            fallback.setFormatter(logging.Formatter("%(levelname)s - %(name)s - %(message)s"))
            for record in bridge.pending:
                fallback.handle(record)


def attach_run_logger(logger: logging.Logger) -> None:
    """Make ``logger`` the destination of the active :func:`package_logs_to_run` block, if any."""
    if _ACTIVE:
        _ACTIVE[-1].attach(logger)


class DropMessages(logging.Filter):
    """Drop records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the messages to drop."""
        return not str(record.msg).startswith(self.prefixes)


class QuietStart(logging.Filter):
    """While ``active``, let only warnings and errors through (console handler of a run).

    mmengine's Runner logs the whole environment, config and hook order while it is built; the
    file keeps them, the console shows the start-up summary instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = True

    def filter(self, record: logging.LogRecord) -> bool:
        """False for INFO and DEBUG records while active."""
        return not self.active or record.levelno >= logging.WARNING


def console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers of ``logger`` that write to the terminal (not to a file)."""
    return [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
