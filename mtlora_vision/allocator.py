"""The CPU allocator of the tools: mimalloc where installed, else glibc tuned to keep freed memory.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves requests above its mmap
threshold (32 MiB at most) with fresh ``mmap`` pages and unmaps them on ``free``, so every large
activation of a forward or backward pass is page-faulted in again, page by page, on first touch
(``x + x`` on a 38 MB tensor: about 16 ms instead of 1.5 ms on this project's 2-core CPU). PyTorch's
CPU performance guide recommends a preloaded allocator for this. ``MTLORA_ALLOCATOR`` chooses:

* ``auto`` (the default): ``mimalloc`` where the ``cmeel-mimalloc`` wheel is installed (a Linux
  dependency of this package), else ``tuned``; a training run that checkpoints activations
  without mimalloc gets ``glibc`` (memory first).
* ``mimalloc``: the tools re-execute themselves once, at start-up, with mimalloc in
  ``LD_PRELOAD``, ``MIMALLOC_PURGE_DELAY=-1`` (freed memory is kept for reuse, never returned
  to the system) and ``MIMALLOC_ALLOW_THP=0`` (:data:`MIMALLOC_SETTINGS`). Its size-segregated
  pages keep fragmentation low, so a run is both fast and lean: 448x448, batch 8, fp32,
  activation checkpointing in every stage: 0.31x the peak memory of the plain step on the tuned
  glibc heap, where glibc's own fragmentation kept it at 0.75x (docs/speed.md).
* ``tuned``: two glibc ``mallopt`` calls, ``M_MMAP_MAX = 0`` (every request from the heap) and
  ``M_TRIM_THRESHOLD = 2 GiB - 1`` (freed heap memory is kept). Fast, but the heap fragments.
* ``glibc``: glibc's defaults.

An allocator that the user preloads (jemalloc, tcmalloc, mimalloc in ``LD_PRELOAD``) is left as it
is. The choice is made by the tools (:func:`preload_mimalloc` in ``mtlora_vision.cli.run_tool``,
then :func:`set_up_allocator` or :func:`tune_cpu_allocator`); importing the library never changes
process-wide settings. Data-loader workers inherit the tool's allocator (and tune glibc at their
first sample, :mod:`mtlora_vision.datasets.worker`).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import platform
import sys
from collections.abc import Mapping

from mtlora_vision.errors import ConfigError

logger = logging.getLogger(__name__)

#: Environment variable that chooses the CPU allocator.
ENV_CHOICE = "MTLORA_ALLOCATOR"
#: Its values; ``auto`` is the default.
CHOICES = ("auto", "mimalloc", "tuned", "glibc")
#: The variable's earlier name; setting it is an error that names the replacement.
RETIRED_SWITCH = "MTLORA_MALLOC_TUNING"
#: mimalloc's settings when the tools preload it (unless already set): keep freed memory; no
#: transparent huge pages (each process started 1.5 s later with them, steps were no faster).
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_THP": "0"}
#: The wheel that ships mimalloc's shared library.
MIMALLOC_DISTRIBUTION = "cmeel-mimalloc"
_PRELOADABLE = ("mimalloc", "jemalloc", "tcmalloc")

# glibc's mallopt parameter numbers (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1

_applied = False


def requested_allocator(environ: Mapping[str, str] | None = None) -> str:
    """The value of :data:`ENV_CHOICE`, checked (``auto`` when unset; ``environ``: os.environ).

    Raises:
        ConfigError: For a value outside :data:`CHOICES`, or when the retired
            :data:`RETIRED_SWITCH` is set (the message names its replacement).
    """
    env = os.environ if environ is None else environ
    if RETIRED_SWITCH in env:
        raise ConfigError(
            f"{RETIRED_SWITCH} was replaced by {ENV_CHOICE}: unset {RETIRED_SWITCH} and use "
            f"{ENV_CHOICE}=glibc for glibc's defaults ({RETIRED_SWITCH}=0) or {ENV_CHOICE}=tuned "
            f"for the tuned glibc heap ({RETIRED_SWITCH}=1)."
        )
    choice = env.get(ENV_CHOICE, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(
            f"{ENV_CHOICE}={env[ENV_CHOICE]!r} is not an allocator choice; use one of "
            f"{', '.join(CHOICES)} (auto: mimalloc where installed, else the tuned glibc heap)."
        )
    return choice


def preloaded_allocator(environ: Mapping[str, str] | None = None) -> str | None:
    """The allocator that ``LD_PRELOAD`` names (mimalloc, jemalloc or tcmalloc), or None (pure)."""
    preload = (os.environ if environ is None else environ).get("LD_PRELOAD", "")
    return next((name for name in _PRELOADABLE if name in preload), None)


def active_allocator(maps: str = "/proc/self/maps") -> str:
    """The allocator in this process's memory map (a preloaded one, else ``glibc``; Linux)."""
    try:
        with open(maps) as handle:
            mapped = handle.read()
    except OSError:
        return "unknown (no /proc/self/maps)"
    return next((name for name in _PRELOADABLE if f"lib{name}" in mapped), "glibc")


def mimalloc_library() -> str | None:
    """Path of the mimalloc shared library of :data:`MIMALLOC_DISTRIBUTION`; None if absent.

    Linux only: the library is preloaded with ``LD_PRELOAD``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = importlib.metadata.files(MIMALLOC_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = sorted((f for f in files if f.name.startswith("libmimalloc.so")), key=str)
    for candidate in candidates:  # libmimalloc.so, .so.3, .so.3.4: the same file
        path = str(candidate.locate())
        if os.path.isfile(path):
            return path
    return None


def preload_environment(environ: Mapping[str, str], library: str) -> dict[str, str]:
    """``environ`` with ``library`` first in ``LD_PRELOAD`` and :data:`MIMALLOC_SETTINGS` (pure).

    Settings already in ``environ`` win, so a user's ``MIMALLOC_PURGE_DELAY`` is kept.
    """
    env = {**MIMALLOC_SETTINGS, **environ}
    env["LD_PRELOAD"] = ":".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    return env


def preload_mimalloc() -> None:
    """Re-execute this tool with mimalloc preloaded, if :data:`ENV_CHOICE` asks for it.

    ``auto`` preloads it where :func:`mimalloc_library` finds it; ``mimalloc`` insists. Nothing
    happens when an allocator is already in ``LD_PRELOAD`` (this is how the re-executed process
    knows it is done), for ``tuned`` and ``glibc``, or without ``sys.orig_argv``. The process keeps
    its id, arguments, interpreter options and open files (``os.execve``), so launchers such as
    torchrun see no difference. Call it first thing in a tool, before any work.

    Raises:
        ConfigError: If ``MTLORA_ALLOCATOR`` is invalid, or is ``mimalloc`` and mimalloc is not
            installed (the message says how to install it).
    """
    choice = requested_allocator()
    if choice not in ("auto", "mimalloc") or preloaded_allocator() is not None:
        return
    library = mimalloc_library()
    if library is None:
        if choice == "mimalloc":
            raise ConfigError(
                f"{ENV_CHOICE}=mimalloc, but no mimalloc library was found: install it with "
                f"`pip install {MIMALLOC_DISTRIBUTION}` (Linux), or use {ENV_CHOICE}=auto."
            )
        return
    argv = getattr(sys, "orig_argv", None)
    if not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], preload_environment(os.environ, library))


def tune_for_training(grad_checkpointing: bool) -> bool:
    """:func:`tune_cpu_allocator` for a training run; with ``auto``, not when it checkpoints.

    Without mimalloc, a run that checkpoints activations asks for memory first, and the tuned
    heap's fragmentation takes much of that saving back (448x448, batch 8, fp32: peak RSS 0.75x of
    the plain step's tuned, 0.33x with glibc's defaults, at 1.44x and 2.20x its step time;
    docs/speed.md), so ``auto`` leaves glibc at its defaults; ``MTLORA_ALLOCATOR=tuned`` tunes it.

    Returns:
        Whether the glibc tuning is in effect.
    """
    if grad_checkpointing and requested_allocator() == "auto" and active_allocator() == "glibc":
        logger.info(
            "CPU allocator left at glibc's defaults: activation checkpointing is on and mimalloc "
            "is not loaded, so freed activations go back to the system (lower peak memory, "
            "slower steps); %s=tuned tunes it anyway.",
            ENV_CHOICE,
        )
        return False
    return tune_cpu_allocator()


def tune_cpu_allocator() -> bool:
    """Apply the glibc ``tuned`` settings once per process, when they are the choice.

    They apply with ``auto`` or ``tuned`` when no other allocator is loaded.

    Returns:
        Whether the settings are in effect (False on non-glibc systems, with ``glibc``, with
        another allocator loaded, or if ``mallopt`` refused them).
    """
    global _applied
    if _applied:
        return True
    if requested_allocator() not in ("auto", "tuned") or preloaded_allocator() is not None:
        logger.debug("glibc malloc left at its defaults (%s or LD_PRELOAD).", ENV_CHOICE)
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


def set_up_allocator(grad_checkpointing: bool = False) -> str:
    """Apply the allocator choice for this run (:func:`tune_for_training`) and describe it.

    Args:
        grad_checkpointing: Whether the run checkpoints activations (training only).

    Returns:
        The start-up summary's line (:func:`describe_allocator`).
    """
    tuned = tune_for_training(grad_checkpointing)
    return describe_allocator(active_allocator(), tuned, grad_checkpointing, requested_allocator())


def describe_allocator(
    active: str, tuned: bool, grad_checkpointing: bool = False, choice: str = "auto"
) -> str:
    """The start-up summary's line: which allocator runs, and how to choose another (pure).

    Args:
        active: :func:`active_allocator`'s answer.
        tuned: Whether the glibc tuning is in effect.
        grad_checkpointing: Whether the run checkpoints activations.
        choice: :func:`requested_allocator`'s answer.
    """
    if active != "glibc":
        if choice in ("tuned", "glibc"):  # preloaded by the user, who chose glibc
            return f"{active} (LD_PRELOAD wins over {ENV_CHOICE}={choice})"
        return f"{active} (LD_PRELOAD; {ENV_CHOICE}=tuned or glibc for glibc's malloc)"
    if tuned:
        return f"glibc, tuned: freed memory kept for reuse ({ENV_CHOICE}={choice})"
    if grad_checkpointing and choice == "auto":
        return (
            f"glibc defaults (checkpointing without mimalloc: memory first; {ENV_CHOICE}=tuned "
            f"tunes it, pip install {MIMALLOC_DISTRIBUTION} gives both)"
        )
    return f"glibc defaults ({ENV_CHOICE}={choice}, or not glibc)"
