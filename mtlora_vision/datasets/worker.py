"""Process settings for data-loading workers: single-threaded OpenCV and a heap-friendly malloc.

Each sample allocates and frees dozens of arrays of 0.2 to 2.5 MB. glibc serves blocks above its
mmap threshold (128 kB at start) with fresh ``mmap`` pages and returns them on ``free``, so every
such array costs a page fault per 4 kB page; on a 448x448 PASCAL sample that was about 40% of the
CPU time. :func:`mtlora_vision.allocator.tune_cpu_allocator` keeps them on the heap, where freed
blocks are reused. It changes no values, only where the memory comes from. Workers forked from a
process of our tools inherit the setting; spawned workers, or loaders in other programs, get it
here. Workers of a tool that preloaded mimalloc (the default, ``mtlora_vision.allocator``) inherit
mimalloc through ``LD_PRELOAD``, and glibc is left alone.
"""

from __future__ import annotations

import os

import cv2
from torch.utils.data import get_worker_info

from mtlora_vision.allocator import tune_cpu_allocator

_configured_pid: int | None = None


def configure_data_worker(force: bool = False) -> None:
    """Apply the worker settings once per process.

    Run OpenCV single-threaded (the workers are the parallelism) and keep large blocks on the
    heap. Only inside data-loader worker processes unless ``force`` (for benchmarks that emulate a
    worker in the main process); the main process is left alone.

    Args:
        force: Apply even outside a data-loader worker.
    """
    global _configured_pid
    pid = os.getpid()
    if _configured_pid == pid or not (force or get_worker_info() is not None):
        return
    cv2.setNumThreads(0)
    tune_cpu_allocator()
    _configured_pid = pid
