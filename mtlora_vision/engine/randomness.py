"""Training randomness that a kill and ``--resume`` reproduce bit for bit.

Everything random in a training step is a pure function of the run's seed and its position:

- the shuffle order of epoch ``e``: ``EpochSeededSampler`` with the shared seed (``seed + e``);
- the augmentation of sample ``i`` in epoch ``e``: seeded by ``(seed, e, i)`` in the dataset, so
  neither the number of data-loader workers nor a restart changes it;
- LoRA dropout, DropPath and anything else drawing from the global generators (torch CPU and
  CUDA, numpy, Python ``random``) in iteration ``t``: :class:`TrainingRandomnessHook` re-seeds them
  from ``(rank seed, t)`` right before the step.

A checkpoint's ``meta`` already holds the seed, epoch and iteration, so resuming restores every
random state that shapes training. mmengine only seeds once when the Runner is built, and anything
that draws in between (each DataLoader iterator takes a seed from the torch generator, validation
runs between epochs) would shift the streams of a resumed run: re-seeding per iteration fixes
that on our side.
"""

from __future__ import annotations

from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mtlora_vision.seeding import derive_seed, seed_global_generators


def shared_seed(runner) -> int:
    """The run's seed common to all processes (mmengine adds the rank with ``diff_rank_seed``)."""
    randomness = runner.cfg.get("randomness") or {}
    return runner.seed - (get_rank() if randomness.get("diff_rank_seed", False) else 0)


class TrainingRandomnessHook(Hook):
    """Make the random state of every training iteration a function of (seed, iteration, rank).

    Before each epoch the train sampler gets the shared seed unless ``train_dataloader.sampler``
    sets one: mmengine builds the sampler before resume may replace the configured seed by the
    checkpoint's (and, with ``diff_rank_seed``, seeds it from a random draw). Before each
    iteration the global generators are seeded from ``(runner.seed, runner.iter)``, where
    ``runner.seed`` already differs per rank when ``randomness.diff_rank_seed`` is set.
    """

    priority = "VERY_HIGH"

    def before_train_epoch(self, runner) -> None:
        """Give the train sampler the shared seed, unless its config sets its own."""
        sampler = getattr(runner.train_dataloader, "sampler", None)
        sampler_cfg = (runner.cfg.get("train_dataloader") or {}).get("sampler") or {}
        if hasattr(sampler, "seed") and sampler_cfg.get("seed") is None:
            sampler.seed = shared_seed(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        """Seed the global generators for iteration ``runner.iter``."""
        seed_global_generators(derive_seed(runner.seed, runner.iter))
