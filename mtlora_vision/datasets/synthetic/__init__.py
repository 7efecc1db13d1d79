"""Synthetic multi-task datasets written in the exact on-disk formats of PASCAL_MT and NYUD_MT.

Tests, CI and the demo read them with the same code as the real benchmarks. The scenes are
learnable (labels agree with the pixels; see ``synthetic/pascal.py`` and ``synthetic/nyud.py``) and
deterministic for a seed: image ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mtlora_vision.datasets.synthetic.nyud import write_nyud_dataset
from mtlora_vision.datasets.synthetic.pascal import write_pascal_dataset

logger = logging.getLogger(__name__)

_WRITERS: dict[str, Callable[[Path, int, int, tuple[int, int], int], None]] = {
    "pascal_context": write_pascal_dataset,
    "nyud": write_nyud_dataset,
}
#: Image size ``(H, W)`` per dataset when none is given: the typical size of the real images.
DEFAULT_SIZES = {"pascal_context": (375, 500), "nyud": (480, 640)}
META_FILE = "synthetic.json"
GENERATOR_VERSION = 1


def _settings(
    dataset: str, num_train: int, num_val: int, size: Sequence[int] | None, seed: int
) -> dict[str, object]:
    if dataset not in _WRITERS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose from {sorted(_WRITERS)}.")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(
            f"Need num_train, num_val >= 0 and at least one image, got {num_train}, {num_val}."
        )
    hw = tuple(int(s) for s in (size if size is not None else DEFAULT_SIZES[dataset]))
    if len(hw) != 2 or min(hw) < 16:
        raise ValueError(f"size must be (H, W) with both >= 16 pixels, got {size!r}.")
    return {
        "dataset": dataset,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": list(hw),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
    }


def make_synthetic_dataset(
    out: str | Path,
    dataset: str,
    num_train: int = 16,
    num_val: int = 8,
    size: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset into ``out`` (created; must be missing or empty).

    Args:
        out: Dataset root to write.
        dataset: ``"pascal_context"`` or ``"nyud"``.
        num_train: Images in the train split.
        num_val: Images in the val split.
        size: Image ``(H, W)``; default 375x500 (PASCAL) or 480x640 (NYUD).
        seed: Random seed; the same seed writes the same dataset.

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: On invalid settings.
        FileExistsError: If ``out`` exists and is not an empty folder.
    """
    settings = _settings(dataset, num_train, num_val, size, seed)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} already exists and is not empty; choose a new folder.")
    _write(out, settings)
    _log_written(out, settings)
    return out


def _write(out: Path, settings: dict[str, object]) -> None:
    """Write the dataset ``settings`` describe into the folder ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    hw = tuple(settings["size"])  # type: ignore[arg-type]
    dataset, num_train, num_val = settings["dataset"], settings["num_train"], settings["num_val"]
    _WRITERS[dataset](out, int(num_train), int(num_val), (hw[0], hw[1]), int(settings["seed"]))
    (out / META_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def _log_written(root: Path, settings: dict[str, object]) -> None:
    """Log that the dataset ``settings`` describe now stands at ``root``."""
    logger.info(
        "Wrote synthetic %s dataset (%d train, %d val, %s) to %s.",
        settings["dataset"],
        settings["num_train"],
        settings["num_val"],
        tuple(settings["size"]),  # type: ignore[arg-type]
        root,
    )


def _lock(lock_path: Path) -> object | None:
    """Exclusive advisory lock on ``lock_path`` (None where ``fcntl`` does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; the atomic rename still keeps it safe
        return None
    handle = open(lock_path, "a")  # noqa: SIM115 - released by _unlock
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _unlock(handle: object | None) -> None:
    if handle is not None:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()  # type: ignore[attr-defined]


def ensure_synthetic_dataset(
    root: str | Path,
    dataset: str,
    num_train: int = 16,
    num_val: int = 8,
    size: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset at ``root`` unless ``root`` already exists.

    The dataset is written to a temporary folder beside ``root`` and renamed into place, so
    ``root`` never exists half-written. Concurrent callers (DDP ranks, test workers) serialise on a
    lock file beside ``root``; the ones that wait then find ``root`` and return.

    Args:
        root: Dataset root.
        dataset: ``"pascal_context"`` or ``"nyud"``.
        num_train: Images in the train split.
        num_val: Images in the val split.
        size: Image ``(H, W)``; default as in :func:`make_synthetic_dataset`.
        seed: Random seed.

    Returns:
        ``root`` as a Path.
    """
    settings = _settings(dataset, num_train, num_val, size, seed)
    root = Path(root)
    if root.exists():
        _warn_if_different(root, settings)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    handle = _lock(root.parent / f".{root.name}.lock")
    try:
        if root.exists():
            return root
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
        try:
            _write(tmp, settings)
            os.rename(tmp, root)
            _log_written(root, settings)  # the final folder, not the temporary one
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not root.is_dir():
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        _unlock(handle)
    return root


def _warn_if_different(root: Path, settings: dict[str, object]) -> None:
    meta = root / META_FILE
    try:
        existing = json.loads(meta.read_text())
    except (OSError, ValueError):
        return
    if existing != settings:
        logger.warning(
            "Using the existing synthetic dataset %s written with %s (requested %s); delete it to "
            "regenerate.",
            root,
            existing,
            settings,
        )
