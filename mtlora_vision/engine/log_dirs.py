"""Names of a work dir's per-run log folders, and their order.

mmengine names a run's log folder by the second it started, ``%Y%m%d_%H%M%S``;
:class:`~mtlora_vision.engine.runner.MultiTaskRunner` gives the second and later runs of the same
second ``<timestamp>_2``, ``<timestamp>_3``, ... (:func:`log_dir_name`). Sorting those names as
strings puts ``_10`` before ``_9``; :func:`log_dir_order` sorts them by start time, then number.
"""

from __future__ import annotations


def log_dir_name(timestamp: str, count: int) -> str:
    """Log folder name of the ``count``-th run started at ``timestamp`` (``timestamp_2``, ...)."""
    return timestamp if count == 1 else f"{timestamp}_{count}"


def log_dir_order(name: str) -> tuple[str, int]:
    """Sort key of a log folder name: ``(timestamp, count)``; names without a count suffix: 1."""
    stem, _, suffix = name.rpartition("_")
    if suffix.isdigit() and _is_timestamp(stem):
        return stem, int(suffix)
    return name, 1


def _is_timestamp(text: str) -> bool:
    """Whether ``text`` looks like mmengine's ``%Y%m%d_%H%M%S``."""
    return len(text) == 15 and text[8] == "_" and (text[:8] + text[9:]).isdigit()
