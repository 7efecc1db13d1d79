"""Timing of the edge evaluation on synthetic edge maps (the body of ``tools/benchmark_edges.py``).

Edge maps look like a trained model's: ground-truth boundaries (``seg2bmap`` of a random partition
with wavy borders, thinned) blurred with a Gaussian and scaled to peak 1; ``dense`` adds smooth
background noise of up to 0.4. Counts must be identical across worker counts (checked).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import cv2
import numpy as np
from scipy.spatial import cKDTree

from mtlora_vision.evaluation.edge_pool import EdgeCounter, worker_pool
from mtlora_vision.evaluation.functional.boundary import MAX_DIST, boundary_thresholds
from mtlora_vision.evaluation.functional.seism import SEISM_THRESHOLDS, seism_gt_boundaries


def make_edge_map(
    size: tuple[int, int], regions: int, sigma: float, dense: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A blurred-boundary prediction and its ground truth.

    Returns:
        ``float32 (H, W)`` probabilities and ``int64 (H, W)`` boundary labels in {0, 1}.
    """
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    warp = [
        cv2.GaussianBlur(rng.standard_normal(size).astype(np.float32), (0, 0), 12) * 120
        for _ in range(2)
    ]
    seeds = rng.random((regions, 2)) * (height, width)
    points = np.stack([(yy + warp[0]).ravel(), (xx + warp[1]).ravel()], axis=1)
    labels = cKDTree(seeds).query(points)[1].reshape(size)
    gt = seism_gt_boundaries(labels)
    prob = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), sigma)
    prob /= max(float(prob.max()), 1e-6)
    if dense:
        noise = cv2.GaussianBlur(rng.random(size).astype(np.float32), (0, 0), 6)
        noise = (noise - noise.min()) / max(float(noise.max() - noise.min()), 1e-6)
        prob = np.maximum(prob, 0.4 * noise)
    return np.clip(prob, 0, 1).astype(np.float32), gt.astype(np.int64)


def _timed(counter: EdgeCounter, prob: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.process_time()
    counts = counter(prob, target)
    return counts, time.process_time() - start


def _count_cpu_seconds(counter: EdgeCounter, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """CPU seconds of counting every pair, on the pool's workers when the counter has them."""
    if counter.workers == 0:
        return sum(_timed(counter, prob, target)[1] for prob, target in pairs)
    timed = worker_pool(counter.workers).map(
        _timed, *zip(*[(counter, *p) for p in pairs], strict=True)
    )
    return sum(seconds for _, seconds in timed)


def _thresholds(protocol: str) -> tuple[float, ...]:
    if protocol == "seism":
        return tuple(SEISM_THRESHOLDS.tolist())
    return tuple(boundary_thresholds(99).tolist())


def run_benchmark(
    images: int,
    size: tuple[int, int],
    regions: int,
    sigma: float,
    dense: bool,
    workers: Sequence[int],
    protocols: Sequence[str],
    repeats: int,
    seed: int,
) -> dict:
    """Median wall and per-image CPU seconds of each protocol and worker count, as a dict."""
    rng = np.random.default_rng(seed)
    pairs = [make_edge_map(tuple(size), regions, sigma, dense, rng) for _ in range(images)]
    max_dist = MAX_DIST["pascal_context"]
    settings = [(p, w) for p in protocols for w in workers]
    counters = {(p, w): EdgeCounter(p, max_dist, _thresholds(p), True, w) for p, w in settings}
    reference: dict[str, list[np.ndarray]] = {}
    for (protocol, workers), counter in counters.items():  # warm-up; results must agree
        counts = counter.count(pairs)
        first = reference.setdefault(protocol, counts)
        if not all(np.array_equal(a, b) for a, b in zip(first, counts, strict=True)):
            raise AssertionError(f"{protocol}: counts with {workers} workers differ.")
    wall: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    cpu: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    for _ in range(repeats):
        for setting, counter in counters.items():
            start_wall = time.perf_counter()
            cpu[setting].append(_count_cpu_seconds(counter, pairs))
            wall[setting].append(time.perf_counter() - start_wall)
    results = {}
    for protocol, workers in settings:
        wall_s = statistics.median(wall[protocol, workers])
        results[f"{protocol}/workers={workers}"] = {
            "wall_s": round(wall_s, 3),
            "s_per_image_per_core": round(statistics.median(cpu[protocol, workers]) / images, 4),
            "images_per_s": round(images / wall_s, 2),
        }
    gt_pixels = [int(gt.sum()) for _, gt in pairs]
    report = {
        "images": images,
        "size": list(size),
        "dense": dense,
        "sigma": sigma,
        "median_gt_pixels": int(np.median(gt_pixels)),
        "repeats": repeats,
        "identical_counts_across_workers": True,
        "results": results,
    }
    return report
