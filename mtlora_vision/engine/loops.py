"""mmengine's epoch-based training loop with two checks.

A train split too small for one batch is an error; resuming inside an epoch is a warning.
"""

from __future__ import annotations

from mmengine.dist import get_world_size
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from mtlora_vision.errors import ConfigError


def check_has_batches(loader: DataLoader, name: str) -> None:
    """Raise if ``loader`` yields no batch (fewer samples per process than one batch, drop_last).

    Args:
        loader: The built data loader.
        name: Its config entry, e.g. ``"train_dataloader"``, for the message.

    Raises:
        ValueError: Naming the split, its size and the batch size.
    """
    if len(loader) > 0:
        return
    dataset = loader.dataset
    split = getattr(dataset, "split", "?")
    per_process, world = len(loader.sampler), get_world_size()
    share = f", {per_process} per process over {world} processes" if world > 1 else ""
    raise ConfigError(
        f"{name}: split {split!r} of {type(dataset).__name__} has {len(dataset)} samples{share}, "
        f"fewer than one batch of {loader.batch_size} (drop_last={loader.drop_last}), so training "
        f"would do nothing. Set {name}.batch_size to at most {max(per_process, 1)} or use a "
        "larger split."
    )


class CheckedEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that checks the split holds one batch before anything runs.

    mmengine would otherwise fail later with an unrelated scheduler error (an epoch of zero
    iterations) or train nothing; the check runs when the Runner builds the loop, before the
    optimizer, the schedulers and any hook.
    """

    def __init__(self, runner, dataloader, **kwargs) -> None:
        super().__init__(runner, dataloader, **kwargs)
        check_has_batches(self.dataloader, "train_dataloader")

    def run(self):
        """Warn when resuming inside an epoch; then run mmengine's loop."""
        done_in_epoch = self._iter - self._epoch * len(self.dataloader)
        if done_in_epoch != 0:
            # mmengine's epoch loop restarts an epoch from its first batch whatever the iteration.
            self.runner.logger.warning(
                f"Resuming at iteration {self._iter}, {done_in_epoch:+d} iterations from the start "
                f"of epoch {self._epoch + 1} ({len(self.dataloader)} per epoch now): that epoch "
                "restarts from its first batch, so this run will not equal an uninterrupted one. "
                "Resume from an end-of-epoch checkpoint (default_hooks.checkpoint.by_epoch=True) "
                "with the same batch size and number of processes for an exact resume."
            )
        return super().run()
