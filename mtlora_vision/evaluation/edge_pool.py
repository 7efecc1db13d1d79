"""Per-image edge counts, in this process or spread over a pool of worker processes.

The counts of one image depend on that image only, so spreading images over processes (and, in
DDP, over ranks: each rank counts its own samples) gives exactly the counts of one process.
Workers are started with ``spawn`` (no copy of a training process's threads or CUDA state) once
per process and reused for every batch; they hold no state between calls.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from mtlora_vision.evaluation.functional.boundary import boundary_pr_counts
from mtlora_vision.evaluation.functional.seism import seism_pr_counts
from mtlora_vision.tasks import EDGE_PROTOCOLS

_POOLS: dict[int, ProcessPoolExecutor] = {}


@dataclass(frozen=True)
class EdgeCounter:
    """Settings of the per-image counts (``cntR, sumR, cntP, sumP`` per threshold).

    Attributes:
        protocol: ``"seism"`` (8-bit PNG levels, thresholds ``k / (T + 1)``) or ``"bsds"``
            (probabilities, the BSDS grid).
        max_dist: Tolerance as a fraction of the image diagonal.
        thresholds: ``(T,)`` increasing thresholds.
        thin: Thin each thresholded prediction.
        workers: Worker processes; 0 counts in the calling process.
    """

    protocol: str
    max_dist: float
    thresholds: tuple[float, ...]
    thin: bool = True
    workers: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in EDGE_PROTOCOLS:
            raise ValueError(
                f"edge_protocol={self.protocol!r} is not one of {list(EDGE_PROTOCOLS)}."
            )
        if self.workers < 0:
            raise ValueError(f"edge_workers={self.workers} must be >= 0.")

    def count(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Counts of each ``(prob, target)`` pair, in order.

        Args:
            pairs: ``(H, W)`` float32 probabilities and ``(H, W)`` integer boundary labels.

        Returns:
            One ``int64 (T, 4)`` array per pair.
        """
        if self.workers == 0 or len(pairs) < 2:
            return [self(prob, target) for prob, target in pairs]
        pool = worker_pool(self.workers)
        return list(pool.map(self, *zip(*pairs, strict=True)))

    def __call__(self, prob: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Counts of one image: ``(H, W)`` probabilities and labels -> ``int64 (T, 4)``."""
        prob_t, target_t = torch.from_numpy(prob), torch.from_numpy(target)
        if self.protocol == "seism":
            counts = seism_pr_counts(
                prob_t, target_t, self.max_dist, np.asarray(self.thresholds), self.thin
            )
        else:
            counts = boundary_pr_counts(
                prob_t,
                target_t,
                self.max_dist,
                torch.tensor(self.thresholds, dtype=torch.float64),
                self.thin,
            )
        return counts.numpy()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool of ``workers`` spawned processes, started on first use and reused."""
    pool = _POOLS.get(workers)
    if pool is None:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        _POOLS[workers] = pool
    return pool
