"""A progress bar over the test (or validation) batches, for ``tools/test.py``."""

from __future__ import annotations

import sys

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from tqdm import tqdm


class ProgressBarHook(Hook):
    """Show a ``tqdm`` bar on stderr while the test loop runs (main process only).

    The bar counts the main process's batches; under DDP every rank runs as many.

    Args:
        desc: Label in front of the bar.
    """

    priority = "HIGH"  # closes the bar before LoggerHook prints the metrics

    def __init__(self, desc: str = "test") -> None:
        self.desc = desc
        self._bar: tqdm | None = None

    def before_test_epoch(self, runner) -> None:
        """Open the bar with one step per batch of the test loader."""
        if not is_main_process():
            return
        self._bar = tqdm(
            total=len(runner.test_dataloader), desc=self.desc, unit="batch", file=sys.stderr
        )

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Advance the bar by one batch."""
        if self._bar is not None:
            self._bar.update(1)

    def after_test_epoch(self, runner, metrics=None) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
