"""Measure data-loading speed: samples per second per worker (decode + augmentation of one sample).

python tools/benchmark_data.py                      # synthetic PASCAL_MT at 375x500, all five tasks
python tools/benchmark_data.py --root data/PASCAL_MT --runs 5
python tools/benchmark_data.py --loader-workers 2   # through a DataLoader, divided by the workers
python tools/benchmark_data.py --without flag-packing   # what one speed-only layer earns
MTLORA_ALLOCATOR=glibc python tools/benchmark_data.py   # ... and the allocator (glibc's defaults)

In-process mode emulates one data-loader worker (the settings of ``datasets/worker.py``: OpenCV
single-threaded, freed blocks kept for reuse; torch single-threaded) and reports the
median over runs of both wall-clock and CPU-time throughput; the CPU-time figure is the one that
stays meaningful when other processes share the machine. The first pass over the images fills the
derived-label cache (edges, human parts) and is not timed.

``--without LAYER`` replaces one speed-only layer of the loader by its plain equivalent (same
values), to measure what the layer earns: ``label-cache`` computes edges and human parts per
sample (``use_cache=False``), ``flag-packing`` gives every label map its own mask channel (five
channels: albumentations warps them in two chunks). ``MTLORA_ALLOCATOR`` chooses the allocator
as for the other tools (``mtlora_vision.allocator``: mimalloc by default, ``tuned`` or ``glibc``).
Compare variants run side by side, alternated.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool
from mtlora_vision.tasks import NUM_OUTPUTS

if TYPE_CHECKING:
    import torch

WITHOUT_CHOICES = ("label-cache", "flag-packing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description="Benchmark multi-task data loading."
    )
    parser.add_argument(
        "--dataset", choices=sorted(NUM_OUTPUTS), default="pascal_context", help="which dataset"
    )
    parser.add_argument(
        "--root", type=Path, help="dataset root (default: a temporary synthetic one)"
    )
    parser.add_argument("--split", default="train", help="split to read (train or val)")
    parser.add_argument("--num-images", type=int, default=24, help="synthetic images to write")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="size of the synthetic images (default: the release's typical size)",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="model input size (default: 448 448 for PASCAL, 480 640 for NYUD)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--samples", type=int, default=48, help="samples per run")
    parser.add_argument("--loader-workers", type=int, default=0, help="0: in-process")
    parser.add_argument("--cache-dir", type=Path, help="derived-label cache (default: temporary)")
    parser.add_argument(
        "--without",
        choices=WITHOUT_CHOICES,
        help="replace this speed-only layer by its plain equivalent (see the module docstring)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def use_plain_equivalent(layer: str) -> None:
    """Swap a speed-only layer for its plain equivalent in this process (benchmark only)."""
    from mtlora_vision.datasets import target_packing

    if layer == "flag-packing":
        target_packing._is_binary = lambda label: False  # every label map its own channel


def build_dataset(
    args: argparse.Namespace, root: Path, cache_dir: Path
) -> torch.utils.data.Dataset:
    from mtlora_vision.datasets.nyud import NYUDMT
    from mtlora_vision.datasets.pascal_context import PascalContextMT

    if args.dataset == "pascal_context":
        img_size = tuple(args.img_size or (448, 448))
        cached = args.without != "label-cache"  # NYUD derives no labels: nothing to cache
        return PascalContextMT(
            root, args.split, img_size=img_size, augment=True, cache_dir=cache_dir, use_cache=cached
        )
    img_size = tuple(args.img_size or (480, 640))
    return NYUDMT(root, args.split, img_size=img_size, augment=True, cache_dir=cache_dir)


def time_in_process(dataset: torch.utils.data.Dataset, runs: int, samples: int) -> dict[str, float]:
    import torch

    from mtlora_vision.datasets.sampler import SampleKey
    from mtlora_vision.datasets.worker import configure_data_worker

    configure_data_worker(force=True)  # what every data-loader worker process gets
    torch.set_num_threads(1)
    for i in range(len(dataset)):  # warm-up: fills the label cache
        dataset[i]
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(samples):  # keyed like the train sampler's: augmentation seeded per sample
            dataset[SampleKey(i % len(dataset), epoch=i // len(dataset), seed=0)]
        wall.append(samples / (time.perf_counter() - w0))
        cpu.append(samples / max(time.process_time() - c0, 1e-9))
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def time_loader(
    dataset: torch.utils.data.Dataset, runs: int, samples: int, workers: int
) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from mtlora_vision.datasets.collate import multitask_collate
    from mtlora_vision.datasets.sampler import EpochSeededSampler

    loader = DataLoader(
        dataset,
        batch_size=1,
        sampler=EpochSeededSampler(dataset, shuffle=True, seed=0),
        num_workers=workers,
        collate_fn=multitask_collate,
        persistent_workers=True,
    )
    for _ in loader:  # warm-up
        pass
    rates = []
    for _ in range(runs):
        seen, w0 = 0, time.perf_counter()
        while seen < samples:
            for _ in loader:
                seen += 1
                if seen >= samples:
                    break
        rates.append(seen / (time.perf_counter() - w0) / workers)
    return {"wall": statistics.median(rates)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    from mtlora_vision.datasets.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = make_synthetic_dataset(
                Path(tmp) / "data", args.dataset, args.num_images, 1, args.size, seed=0
            )
        if args.without:
            use_plain_equivalent(args.without)
        dataset = build_dataset(args, root, args.cache_dir or Path(tmp) / "cache")
        if args.loader_workers > 0:
            result = time_loader(dataset, args.runs, args.samples, args.loader_workers)
        else:
            result = time_in_process(dataset, args.runs, args.samples)
        sample = dataset[0]
    shape = tuple(sample["inputs"].shape)
    print(f"dataset        {args.dataset} ({len(dataset)} images, tasks {list(dataset.tasks)})")
    print(f"input          {shape}, original {sample['data_samples']['ori_shape']}")
    print(f"variant        without {args.without}" if args.without else "variant        all layers")
    for key, value in result.items():
        label = "wall-clock" if key == "wall" else "CPU time"
        print(f"samples/s per worker ({label}, median of {args.runs}): {value:.1f}")
    return result


if __name__ == "__main__":
    run_tool(main, preload_allocator=True)
