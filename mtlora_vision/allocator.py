"""Keep glibc from handing large tensor buffers back to the kernel after every free (CPU speed).

PyTorch's CPU tensors come straight from ``malloc``. glibc serves requests above its mmap
threshold (32 MiB at most) with fresh ``mmap`` pages and unmaps them on ``free``, so every large
activation of a forward or backward pass is page-faulted in again, page by page, on first touch.
On this project's 2-core CPU, ``x + x`` on a 38 MB tensor takes about 16 ms with the default
settings and 1.5 ms with the tuning below; a 448x448 MTLoRA step allocates hundreds of such
buffers. PyTorch's CPU performance guide recommends jemalloc or tcmalloc for this; two ``mallopt``
calls give the same effect without a dependency:

* ``M_MMAP_MAX = 0``: serve every request from the heap, never from a private mapping;
* ``M_TRIM_THRESHOLD = 2 GiB - 1``: keep freed heap memory for the next allocation instead of
  trimming it.

Measured for the MTLoRA r64 training step at 448x448, batch 2, one thread: 4.74 s -> 4.25 s per
step (the frozen Swin's step is unchanged), peak RSS 3.98 -> 4.18 GB (heap fragmentation; stable
from the third to the thirtieth step). The process keeps its peak heap until it exits. The tools
call :func:`tune_cpu_allocator` at start-up (``tools/train.py`` through
:func:`tune_for_training`: not when the run checkpoints activations), and data-loader workers at
their first sample; a library import never changes process-wide settings. Set
``MTLORA_MALLOC_TUNING=0`` to keep glibc's defaults, ``1`` to tune even a checkpointed run; with
jemalloc or tcmalloc in ``LD_PRELOAD`` nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

#: Environment variable that turns the tuning off when set to ``0``, ``false`` or ``no``.
ENV_SWITCH = "MTLORA_MALLOC_TUNING"

# glibc's mallopt parameter numbers (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1

_applied = False


def _switch(env: dict[str, str]) -> str:
    """The value of :data:`ENV_SWITCH`, normalised ("" when unset)."""
    return env.get(ENV_SWITCH, "").strip().lower()


def tuning_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment leaves the tuning on (pure; ``environ`` defaults to os.environ)."""
    env = os.environ if environ is None else environ
    if _switch(env) in ("0", "false", "no", "off"):
        return False
    preload = env.get("LD_PRELOAD", "")
    return not any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def tuning_forced(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for the tuning explicitly (``1``, ``true``, ``yes``, ``on``)."""
    return _switch(os.environ if environ is None else environ) in ("1", "true", "yes", "on")


def describe_allocator(tuned: bool, grad_checkpointing: bool = False) -> str | None:
    """A line for a run's start-up summary when the allocator is not tuned, else None (pure)."""
    if tuned:
        return None  # the default: not worth a line
    if grad_checkpointing:
        return f"glibc defaults (checkpointing: memory first; {ENV_SWITCH}=1 tunes it)"
    return f"not tuned ({ENV_SWITCH}=0, another allocator preloaded, or not glibc)"


def tune_for_training(grad_checkpointing: bool) -> bool:
    """:func:`tune_cpu_allocator` for a training run, unless it checkpoints activations.

    A run that checkpoints activations asks for memory first; the tuning's heap fragmentation
    takes much of that saving back (448x448, batch 8, fp32: peak RSS 0.75x of the plain step's
    with the tuning, 0.33x without it, at 1.44x and 2.20x its step time; docs/speed.md), so the
    allocator stays at glibc's defaults unless ``MTLORA_MALLOC_TUNING=1``.

    Returns:
        Whether the tuning is in effect.
    """
    if grad_checkpointing and not tuning_forced():
        logger.info(
            "CPU allocator left at glibc's defaults: activation checkpointing is on, so freed "
            "activations go back to the system (lower peak memory, slower steps); %s=1 tunes it "
            "anyway.",
            ENV_SWITCH,
        )
        return False
    return tune_cpu_allocator()


def tune_cpu_allocator() -> bool:
    """Apply the glibc settings of the module docstring once per process.

    Returns:
        Whether the settings are in effect (False on non-glibc systems, when switched off, with
        another allocator preloaded, or if ``mallopt`` refused them).
    """
    global _applied
    if _applied:
        return True
    if not tuning_requested():
        logger.info("CPU allocator left at its defaults (%s or LD_PRELOAD).", ENV_SWITCH)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("Not glibc: CPU allocator left at its defaults.")
        return False
    libc = ctypes.CDLL("libc.so.6")
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    if not ok:
        logger.warning("glibc refused the mallopt settings; CPU steps may page-fault more.")
        return False
    _applied = True
    logger.debug("glibc malloc: no mmap for large blocks, freed memory kept for reuse.")
    return True
