"""Which checkpoint ``--resume`` continues from: the most advanced complete one of the work dir.

* **By progress, not file times.** Each candidate's training progress is read from the
  ``meta`` (``epoch``, ``iter``) that mmengine stores inside it; the highest iteration wins. File
  times change with ``cp``, ``touch`` or a restore from backup and say nothing about training.
* **Candidates**: every ``epoch_N.pth`` / ``iter_N.pth`` in the work dir and the file named by
  ``last_checkpoint`` (written by the checkpoint hook after the checkpoint itself, so a kill in
  between leaves the newest checkpoint unnamed, but still found).
* **Relative pointer.** ``last_checkpoint`` holds a path relative to the work dir (absolute only
  for an ``out_dir`` outside it), so a copied or moved work dir resumes from its own files. An
  absolute pointer written by an older version into another folder is read as the work dir's own
  file of that name when one exists.
* **Damage survived.** A candidate that fails its integrity check (see
  :mod:`mtlora_vision.fileio`) is skipped with a warning naming it and why; the next most advanced
  complete one is used. Only when every candidate is damaged is it an error.
* **Cheap.** Each candidate's ``meta`` is read through a memory map (no tensor data), and only
  the most advanced ones are checksummed, from the top down until one is complete: a work dir of
  many large checkpoints is not read in full. A file in torch's legacy (non-zip) format cannot be
  memory-mapped: it is checked before its ``meta`` is read, and that check is not repeated.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mtlora_vision.fileio import atomic_write_bytes
from mtlora_vision.safe_load import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    check_checkpoint_integrity,
    peek_checkpoint,
    peek_reads_in_full,
)

logger = logging.getLogger(__name__)

POINTER = "last_checkpoint"
_CHECKPOINT_NAME = re.compile(r"(epoch|iter)_(\d+)\.pth")


@dataclass(frozen=True)
class CheckpointProgress:
    """A complete training checkpoint and the progress recorded in its ``meta``."""

    path: str
    epoch: int
    iter: int


def write_pointer(work_dir: str, checkpoint: str) -> None:
    """Write ``work_dir/last_checkpoint`` atomically, relative to the work dir when inside it."""
    work_dir = osp.abspath(work_dir)
    if "://" not in checkpoint:  # a remote out_dir (mmengine backend URI) is kept as it is
        checkpoint = osp.abspath(checkpoint)
    inside = "://" not in checkpoint and osp.commonpath([work_dir, checkpoint]) == work_dir
    text = osp.relpath(checkpoint, work_dir) if inside else checkpoint
    atomic_write_bytes(text.encode(), osp.join(work_dir, POINTER))


def read_pointer(work_dir: str) -> str | None:
    """The path in ``work_dir/last_checkpoint``, resolved against the work dir, or None."""
    pointer = osp.join(work_dir, POINTER)
    if not osp.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        text = f.read().strip()
    if not text:
        return None
    if not osp.isabs(text):
        return osp.join(work_dir, text)
    own = osp.join(work_dir, osp.basename(text))
    elsewhere = osp.dirname(osp.normpath(text)) != osp.normpath(osp.abspath(work_dir))
    return own if elsewhere and osp.isfile(own) else text


def checkpoint_progress(path: str) -> CheckpointProgress:
    """Check a checkpoint's integrity and return the progress in its ``meta``.

    Raises:
        DamagedCheckpointError: If the file is damaged.
        UnsafeCheckpointError: If it holds a type outside the allow-list.
        ValueError: If it records no ``meta.epoch`` / ``meta.iter`` (not a training checkpoint).
    """
    check_checkpoint_integrity(path)
    return _recorded_progress(path)


def _recorded_progress(path: str) -> CheckpointProgress:
    """The progress in a checkpoint's ``meta``; a legacy-format file must have been checked."""
    checkpoint = peek_checkpoint(path, check_legacy=False)
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping) or "epoch" not in meta or "iter" not in meta:
        raise ValueError(f"{path!r} records no training progress (meta.epoch, meta.iter).")
    return CheckpointProgress(path, int(meta["epoch"]), int(meta["iter"]))


def _candidate_progress(path: str, checked: set[str]) -> CheckpointProgress:
    """The progress in a candidate's ``meta``, for :func:`latest_checkpoint`.

    A zip checkpoint is peeked through a memory map, unchecked (only the chosen one is checked
    later); a legacy-format file is read in full, so it is checked first and added to ``checked``.
    """
    if peek_reads_in_full(path):
        check_checkpoint_integrity(path)
        checked.add(path)
    return _recorded_progress(path)


def checkpoint_candidates(work_dir: str) -> list[str]:
    """``last_checkpoint``'s file and the work dir's ``epoch_N``/``iter_N`` files (no repeats)."""
    paths = []
    pointed = read_pointer(work_dir)
    if pointed is not None and osp.isfile(pointed):
        paths.append(pointed)
    if osp.isdir(work_dir):
        names = sorted(n for n in os.listdir(work_dir) if _CHECKPOINT_NAME.fullmatch(n))
        paths += [osp.join(work_dir, n) for n in names]
    unique: dict[str, str] = {}
    for path in paths:
        unique.setdefault(osp.realpath(path), path)
    return list(unique.values())


def latest_checkpoint(work_dir: str) -> CheckpointProgress | None:
    """The most advanced complete checkpoint of a run, for ``--resume`` without a path.

    Damaged candidates (and files that record no progress) are skipped with a warning.

    Returns:
        The checkpoint and its progress, or None when the work dir holds no checkpoint.

    Raises:
        DamagedCheckpointError: If there are checkpoints but every one is damaged.
    """
    recorded, skipped = [], []
    checked: set[str] = set()  # legacy files, checked before peeking: once is enough

    def skip(path: str, reason: str) -> None:
        skipped.append(f"{path} is damaged: {reason}.")
        logger.warning("--resume skips %s, it is damaged: %s.", path, reason)

    for path in checkpoint_candidates(work_dir):
        try:
            recorded.append(_candidate_progress(path, checked))
        except UnsafeCheckpointError:
            raise  # never skipped quietly: a refused file in a work dir needs a look
        except DamagedCheckpointError as err:
            skip(path, err.reason)
        except ValueError as err:
            skipped.append(str(err))
            logger.warning("--resume skips %s: %s", path, err)
    for point in sorted(recorded, key=lambda c: (c.iter, c.epoch), reverse=True):
        try:
            if point.path not in checked:
                check_checkpoint_integrity(point.path)
        except DamagedCheckpointError as err:
            skip(point.path, err.reason)
            continue
        return point
    if skipped:
        raise DamagedCheckpointError(
            f"No complete checkpoint to resume in {work_dir!r}: {' '.join(skipped)} Start "
            "without --resume, or restore a checkpoint."
        )
    return None


def latest_checkpoint_path(work_dir: str) -> str | None:
    """Path of :func:`latest_checkpoint`, or None (also when none is complete), for messages."""
    try:
        point = latest_checkpoint(work_dir)
    except (DamagedCheckpointError, ValueError):
        return None
    return point.path if point is not None else None


def training_finished(train_cfg: Mapping[str, Any], point: CheckpointProgress) -> bool:
    """Whether ``point`` already reached the end of training (``max_epochs`` or ``max_iters``)."""
    if train_cfg.get("max_epochs") is not None:
        return point.epoch >= train_cfg["max_epochs"]
    if train_cfg.get("max_iters") is not None:
        return point.iter >= train_cfg["max_iters"]
    return False
