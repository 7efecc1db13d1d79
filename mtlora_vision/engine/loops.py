"""mmengine's epoch-based training loop: a split too small is an error; mid-epoch resume is exact.

mmengine's ``EpochBasedTrainLoop`` restarts an epoch from its first batch when a run resumes
from a checkpoint written inside it (``default_hooks.checkpoint.by_epoch=False``), so those
batches are trained twice and the epoch runs longer than planned. The loop here continues the
epoch where the checkpoint left it instead: the sampler
(:class:`~mtlora_vision.datasets.sampler.EpochSeededSampler`) leaves out the samples already
trained, in the same order, and the iteration numbers carry on.
"""

from __future__ import annotations

from mmengine.dist import get_world_size
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from mtlora_vision.datasets.sampler import EpochSeededSampler
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
    """``EpochBasedTrainLoop`` that checks the split holds one batch and resumes mid-epoch exactly.

    Without the check mmengine would fail later with an unrelated scheduler error (an epoch of
    zero iterations) or train nothing; it runs when the Runner builds the loop, before the
    optimizer, the schedulers and any hook. A run resumed inside an epoch skips that epoch's
    trained batches (see the module docstring).
    """

    def __init__(self, runner, dataloader, **kwargs) -> None:
        super().__init__(runner, dataloader, **kwargs)
        check_has_batches(self.dataloader, "train_dataloader")

    def run_epoch(self) -> None:
        """Iterate one epoch; a resumed one starts at the first batch not yet trained."""
        done_in_epoch = self._iter - self._epoch * len(self.dataloader)
        if done_in_epoch == 0:
            return super().run_epoch()
        self.runner.call_hook("before_train_epoch")  # sets the sampler's epoch and seed
        skipped = self._skip_trained_batches(done_in_epoch)
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader, start=skipped):
            self.run_iter(idx, data_batch)
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1
        return None

    def _skip_trained_batches(self, done_in_epoch: int) -> int:
        """Make the sampler leave out the epoch's trained batches; return how many it skips."""
        sampler, batch_size = self.dataloader.sampler, self.dataloader.batch_size
        per_epoch = len(self.dataloader)
        if isinstance(sampler, EpochSeededSampler) and batch_size and 0 < done_in_epoch < per_epoch:
            sampler.skip_next(done_in_epoch * batch_size)
            self.runner.logger.info(
                f"Resuming inside epoch {self._epoch + 1}: its first {done_in_epoch} of "
                f"{per_epoch} batches were trained before the checkpoint and are skipped."
            )
            return done_in_epoch
        self.runner.logger.warning(
            f"Resuming at iteration {self._iter}, {done_in_epoch:+d} iterations from the start "
            f"of epoch {self._epoch + 1} ({per_epoch} per epoch now) with a "
            f"{type(sampler).__name__}: that epoch restarts from its first batch, so this run will "
            "not equal an uninterrupted one. Use the configs' EpochSeededSampler, or resume from "
            "an end-of-epoch checkpoint, for an exact resume."
        )
        return 0
