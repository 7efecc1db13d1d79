"""mmengine's Runner with a readable console: short start-up summary, full record in the log file.

:class:`MultiTaskRunner` changes what is *shown*, never what is run:

* until training or testing starts, INFO lines (system environment, the whole config, hook order,
  data and optimizer set-up) go to the ``.log`` file only; the console then gets
  :func:`~mtlora_vision.engine.summary.startup_summary`, progress, and at the end the best and
  last value of each metric;
* the runtime environment in the log names the device and the number of processes (mmengine's
  says ``GPU number: 1`` and ``backend: nccl`` on a CPU machine);
* the package's own log records go through this run's logger
  (:mod:`mtlora_vision.engine.run_logging`);
* mmengine's warnings about its own internal use of deprecated APIs are dropped;
* the line mmengine prints to stdout when it loads a checkpoint (``Loads checkpoint by ...``,
  ``print_log`` without a logger) goes to the run's log instead;
* a Runner started in the same second as another one in the same work dir gets its own log folder
  ``WORK_DIR/<timestamp>_2`` (``_3``, ...) and experiment name (:func:`claim_log_dir`);
* a second Runner of the same config started within the same second in one process, in another
  work dir, gets the log folder ``<timestamp>_2`` too, and with it its own logger, message hub,
  visualiser and default scope (mmengine names them by config and second and would hand it the
  first one's: a logger that writes into the first run's log file, and a warning).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import os.path as osp
from collections import OrderedDict
from collections.abc import Callable

import torch
from mmengine.dist import broadcast, get_rank, master_only
from mmengine.logging import MessageHub, MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.utils.dl_utils import collect_env
from mmengine.visualization import Visualizer

from mtlora_vision.engine.log_dirs import log_dir_name
from mtlora_vision.engine.run_logging import (
    CONSOLE_DROPS,
    MMENGINE_SELF_DEPRECATIONS,
    DropMessages,
    QuietStart,
    attach_run_logger,
    console_handlers,
)
from mtlora_vision.engine.runtime import _type_name
from mtlora_vision.engine.summary import RunSummaryHook


def quiet_run_logger(logger: logging.Logger) -> QuietStart:
    """Quiet start and the console's drops on the console, mmengine's deprecations everywhere."""
    quiet = QuietStart()
    for handler in logger.handlers:
        _drop_once(handler, MMENGINE_SELF_DEPRECATIONS)
    for handler in console_handlers(logger):
        for old in [f for f in handler.filters if isinstance(f, QuietStart)]:
            handler.removeFilter(old)
        handler.addFilter(quiet)
    drop_on_console(logger, CONSOLE_DROPS)
    return quiet


def drop_on_console(logger: logging.Logger, prefixes: tuple[str, ...]) -> None:
    """Keep messages starting with ``prefixes`` off ``logger``'s console (its file keeps them)."""
    for handler in console_handlers(logger):
        _drop_once(handler, prefixes)


def _drop_once(handler: logging.Handler, prefixes: tuple[str, ...]) -> None:
    """Add ``DropMessages(prefixes)`` to ``handler`` unless it has it (loggers outlive runs)."""
    if not any(isinstance(f, DropMessages) and f.prefixes == prefixes for f in handler.filters):
        handler.addFilter(DropMessages(prefixes))


def instance_name_taken(name: str) -> bool:
    """Whether this process has an mmengine logger, hub, visualiser or default scope ``name``.

    A Runner names all four by its experiment name.
    """
    kinds = (MMLogger, MessageHub, Visualizer, DefaultScope)
    return any(kind.check_instance_created(name) for kind in kinds)


def claim_log_dir(
    work_dir: str, timestamp: str, taken: Callable[[str], bool] = lambda _: False
) -> int:
    """Create a log folder ``work_dir/log_dir_name(timestamp, count)`` no other run has.

    mmengine names the log folder, log file and experiment by the second the run started, so two
    runs started in the same second in one work dir (a sweep script, tests) would share them.
    ``os.mkdir`` either creates the folder or fails because it exists, atomically, so concurrent
    runs never claim the same name. A finer timestamp instead would still collide (a coarse
    clock, concurrent starts) and would rename every run's folder, not only the second one's.

    Args:
        work_dir: The run's work dir (it exists).
        timestamp: mmengine's ``%Y%m%d_%H%M%S`` start time of the run.
        taken: Folder names to pass over although the folder is free (names in use in this
            process by a Runner of another work dir).

    Returns:
        The smallest ``count`` whose folder did not exist yet (and now does).
    """
    for count in itertools.count(1):
        name = log_dir_name(timestamp, count)
        if taken(name):
            continue
        try:
            os.mkdir(osp.join(work_dir, name))
        except FileExistsError:
            continue
        return count
    raise AssertionError("unreachable: itertools.count never ends")


def runtime_environment(runner: Runner, env_cfg: dict) -> OrderedDict:
    """The runtime facts the log records: settings in force, device and processes."""
    env = OrderedDict()
    env["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if env["device"] == "cpu":
        env["torch threads"] = torch.get_num_threads()
    env["processes"] = runner.world_size
    env["launcher"] = runner.launcher
    if runner.distributed:
        env["distributed backend"] = torch.distributed.get_backend()
    for key, value in env_cfg.items():
        if key != "dist_cfg":  # the backend in force is listed above when distributed
            env[key] = value
    env.update(runner._randomness_cfg)
    env["seed"] = runner.seed
    return env


class MultiTaskRunner(Runner):
    """``mmengine.runner.Runner`` with the console and log behaviour described in the module."""

    def __init__(self, *args, **kwargs) -> None:
        self._quiet: QuietStart | None = None
        self._requested_name = kwargs.get("experiment_name")  # as Runner.from_cfg passes it
        super().__init__(*args, **kwargs)
        self.register_hook(RunSummaryHook(quiet=self._quiet))

    def setup_env(self, env_cfg: dict) -> None:
        """Set up as mmengine does, then make the timestamp name a log folder of this run only.

        mmengine derives the log folder, log file and experiment name (``<config>_<timestamp>``,
        which names the run's logger, message hub, visualiser and DefaultScope) from
        ``self._timestamp``. Rank 0 claims a fresh folder (:func:`claim_log_dir`), passing over
        names whose experiment name a Runner of another work dir already holds in this process (a
        run of the same config started in the same second), and sends the suffix it got to the
        other ranks, so that all of them use the same name.
        """
        super().setup_env(env_cfg)
        stem = self._requested_name  # mmengine's experiment name: this, or the config's stem
        if stem is None and self.cfg.filename is not None:
            stem = osp.splitext(osp.basename(self.cfg.filename))[0]
        prefix = "" if stem is None else f"{stem}_"

        def taken(folder: str) -> bool:
            return instance_name_taken(prefix + folder)

        count = torch.ones((), dtype=torch.int64)
        if get_rank() == 0:
            count.fill_(claim_log_dir(self._work_dir, self._timestamp, taken))
        broadcast(count)  # nothing to do without a process group
        self._timestamp = log_dir_name(self._timestamp, int(count.item()))

    def build_logger(self, log_level="INFO", log_file=None, **kwargs) -> MMLogger:
        """Build mmengine's logger, quiet on the console until the Runner is built."""
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        self._quiet = quiet_run_logger(logger)
        attach_run_logger(logger)
        return logger

    def load_checkpoint(self, filename: str, *args, **kwargs) -> dict:
        """Load as mmengine does; what it prints goes to the run's log."""
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                return super().load_checkpoint(filename, *args, **kwargs)
        finally:
            for line in printed.getvalue().splitlines():
                self.logger.info(line)

    def _log_env(self, env_cfg: dict) -> None:
        """Log the system and runtime environment and the config (to the log file)."""
        system = "\n    ".join(f"{k}: {v}" for k, v in collect_env().items())
        runtime = "\n    ".join(f"{k}: {v}" for k, v in runtime_environment(self, env_cfg).items())
        line = "-" * 60
        self.logger.info(
            f"\n{line}\nSystem environment:\n    {system}\n\nRuntime environment:\n    {runtime}\n"
            f"{line}\n"
        )
        if self.cfg._cfg_dict:
            self.logger.info(f"Config:\n{self.cfg.pretty_text}")


def prepare_test_config(cfg) -> None:
    """Adjust a config for ``tools/test.py`` (in place): no TensorBoard backend.

    A test writes no scalars or images to TensorBoard (metrics go to the log, ``--out`` and the
    run's JSON), but the backend would still open an empty event file, an empty run in
    ``tensorboard --logdir work_dirs/``.
    """
    visualizer = cfg.get("visualizer")
    if not visualizer:
        return
    backends = visualizer.get("vis_backends") or []
    visualizer["vis_backends"] = [
        b for b in backends if "Tensorboard" not in _type_name(b.get("type", ""))
    ]


class TestRunner(MultiTaskRunner):
    """Runner for ``tools/test.py``: its config dump goes to its own ``WORK_DIR/<timestamp>/``.

    mmengine dumps the config to ``WORK_DIR/<config name>.py``, the file a training run left
    there; a test's dump (with ``load_from`` set to the checkpoint) would replace it, and
    training again from that file would silently start from the trained weights.
    """

    __test__ = False  # not a pytest test class

    @master_only
    def dump_config(self) -> None:
        """Write the config into this test's log folder, beside its ``.log`` file."""
        name = osp.basename(self.cfg.filename) if self.cfg.filename else f"{self.timestamp}.py"
        self.cfg.dump(osp.join(self.log_dir, name))
