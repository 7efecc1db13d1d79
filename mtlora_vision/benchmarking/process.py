"""Set-up shared by the benchmark tools: input check, allocator, threads, timed progress lines."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mtlora_vision.allocator import set_up_allocator
from mtlora_vision.errors import ConfigError


def setup_process(img_size: int, threads: int | None) -> tuple[str, Callable[[str], str]]:
    """Check ``img_size``, tune the CPU allocator as the train and test tools do, set threads.

    ``MTLORA_ALLOCATOR`` chooses the allocator (``mtlora_vision.allocator``; the tools preload
    mimalloc before this runs).

    Returns:
        The allocator's description (the start-up summary's line), and ``stamp(message)``: the
        message behind the seconds since this call (the tools' progress lines).

    Raises:
        ConfigError: If ``img_size`` is not a multiple of 32, naming the nearest that is (the
            tools report it as ``tool.py: error: ...``, exit status 2).
    """
    if img_size % 32:
        fixed = max(32, round(img_size / 32) * 32)
        raise ConfigError(
            f"--img-size {img_size}: the Swin backbones take multiples of 32; use e.g. "
            f"--img-size {fixed}."
        )
    allocator = set_up_allocator()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()

    def stamp(message: str) -> str:
        return f"[{time.perf_counter() - start:6.1f} s] {message}"

    return allocator, stamp
