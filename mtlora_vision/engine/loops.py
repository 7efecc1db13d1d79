"""mmengine's epoch-based training loop, refusing a train split too small for one batch."""

from __future__ import annotations

from mmengine.dist import get_world_size
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader


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
    raise ValueError(
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
