"""Time the edge evaluation (ODS/OIS/AP counts) per image, in one process and over a pool.

    python tools/benchmark_edges.py --images 16 --size 512 512 --workers 0 2 --repeats 3

Edge maps are made as a trained model's look: ground-truth boundaries (``seg2bmap`` of a random
partition into about 40 regions with wavy borders, thinned) blurred with a Gaussian (``--sigma``)
and scaled to peak 1; ``--dense`` adds smooth background noise of up to 0.4, the harder case of a
model that fires everywhere (large blobs to thin at low thresholds). Every protocol and worker
count scores the same maps; the counts must be identical across worker counts (checked).

Prints one JSON object: per protocol and worker count the medians over ``--repeats`` rounds of the
wall-clock seconds for all images and of ``s_per_image_per_core``, the CPU seconds spent counting
(in the main process for 0 workers, summed over the workers' own clocks otherwise) per image:
steady on a shared machine, where wall-clock time also measures the other processes. Rounds
interleave the settings so load from other processes hits them alike. The first call of each
setting (pool start, loading the compiled kernels) is excluded.
"""

from __future__ import annotations

import argparse
import json

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool
from mtlora_vision.tasks import EDGE_PROTOCOLS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description="Time the edge evaluation per image."
    )
    parser.add_argument("--images", type=int, default=16, help="edge maps per round")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="map size"
    )
    parser.add_argument("--regions", type=int, default=40, help="regions per ground truth")
    parser.add_argument("--sigma", type=float, default=1.5, help="blur of the boundaries, pixels")
    parser.add_argument("--dense", action="store_true", help="add smooth background noise")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="pool sizes (0: in process)"
    )
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=list(EDGE_PROTOCOLS),
        default=list(EDGE_PROTOCOLS),
        help="edge protocols to time",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic maps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # Heavy imports after parsing, so that --help answers at once.
    from mtlora_vision.evaluation.edge_benchmark import run_benchmark

    report = run_benchmark(
        args.images,
        tuple(args.size),
        args.regions,
        args.sigma,
        args.dense,
        args.workers,
        args.protocols,
        args.repeats,
        args.seed,
    )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_tool(main)
