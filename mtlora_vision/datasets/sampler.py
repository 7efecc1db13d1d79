"""A training sampler whose indices carry the epoch and seed, so augmentation is reproducible.

Each sample's random augmentation is drawn from a generator seeded by ``(seed, epoch, index)``
(:func:`augmentation_seed`), never from a worker's global random state. The same sample of the same
epoch is therefore augmented identically whatever the number of data-loader workers, whether the
workers persist, and whether the run was killed and resumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from mmengine.dataset import DefaultSampler

from mtlora_vision.seeding import derive_seed


class SampleKey(NamedTuple):
    """What the sampler hands the dataset: which sample, in which epoch, of which run seed."""

    index: int
    epoch: int
    seed: int


def augmentation_seed(key: SampleKey) -> int:
    """The seed of one sample's augmentation: a pure function of ``(seed, epoch, index)``."""
    return derive_seed(key.seed, key.epoch, key.index)


class EpochSeededSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` (same order, padding, rank split), yielding SampleKey.

    The shuffle order of epoch ``e`` is a permutation seeded by ``seed + e``, as in
    ``DefaultSampler``; ``seed`` must be the same on every process (``TrainingRandomnessHook``
    sets it to the run's shared seed before every epoch).

    :meth:`skip_next` makes the next pass start later in the same order: a run resumed inside
    an epoch continues with the samples the interrupted run had not reached.
    """

    _skip = 0

    def skip_next(self, count: int) -> None:
        """Leave out the first ``count`` samples (of this process) of the next pass only."""
        if count < 0:
            raise ValueError(f"skip_next needs a count >= 0, got {count}.")
        self._skip = count

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield SampleKey(int(index), int(self.epoch), int(self.seed))
