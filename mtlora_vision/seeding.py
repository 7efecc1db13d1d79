"""Seeds derived from integer keys, and seeding the global random generators."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of non-negative integer keys (numpy SeedSequence).

    Different key tuples give statistically independent seeds, e.g. ``(seed, epoch, index)`` for a
    sample's augmentation and ``(seed, iteration)`` for a training step.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


def seed_global_generators(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and Python ``random`` from one 64-bit seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
