"""Process settings for data-loading workers: single-threaded OpenCV and a heap-friendly malloc.

Each sample allocates and frees dozens of arrays of 0.2 to 2.5 MB. glibc serves blocks above its
mmap threshold (128 kB at start) with fresh ``mmap`` pages and returns them on ``free``, so every
such array costs a page fault per 4 kB page; on a 448x448 PASCAL sample that was about 40% of the
CPU time. Raising the threshold keeps them on the heap, where freed blocks are reused. It changes
no values, only where the memory comes from.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import cv2
from torch.utils.data import get_worker_info

logger = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (a few samples' worth of temporaries).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free heap memory kept before it is returned to the system.
TRIM_THRESHOLD_BYTES = 64 << 20

_configured_pid: int | None = None


def keep_large_blocks_on_heap() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (Linux with glibc only).

    Returns:
        True if the setting was applied; False where ``mallopt`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:
        logger.debug("mallopt refused the data-worker thresholds; keeping the defaults.")
    return applied


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
    keep_large_blocks_on_heap()
    _configured_pid = pid
