"""Verification of a multi-task dataset on disk: layout, split counts and every file's content.

``verify_dataset`` reads each file a dataset would read (unless ``quick``) and reports every
missing, unreadable or mis-sized file with its path, plus split counts that differ from the real
releases.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtlora_vision.datasets.labels import anno_objects, decode_human_parts
from mtlora_vision.datasets.nyud import (
    NYUD_LAYOUT,
    NYUD_SPLIT_SIZES,
    decode_nyud_file,
    resolve_extension,
)
from mtlora_vision.datasets.pascal_context import PASCAL_SPLIT_SIZES, pascal_paths
from mtlora_vision.datasets.pascal_files import (
    read_context_labels,
    read_normals,
    read_saliency,
    read_semseg,
)
from mtlora_vision.datasets.readers import (
    CorruptFileError,
    SizeMismatchError,
    read_mat_variable,
    read_rgb,
)
from mtlora_vision.datasets.synthetic import META_FILE

EXPECTED_COUNTS: Mapping[str, Mapping[str, int]] = {
    "pascal_context": PASCAL_SPLIT_SIZES,
    "nyud": NYUD_SPLIT_SIZES,
}
_SPLIT_DIRS = {"pascal_context": ("ImageSets", "Context"), "nyud": ("gt_sets",)}
_READ_ERRORS = (CorruptFileError, ValueError, KeyError, OSError, IndexError, tarfile.TarError)


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` is ``missing``, ``unreadable``, ``mis-sized`` or ``count``."""

    kind: str
    path: Path
    detail: str = ""


@dataclass
class DatasetReport:
    """Result of :func:`verify_dataset`."""

    dataset: str
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unreadable or mis-sized (split sizes may differ)."""
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        """Missing, unreadable and mis-sized files: the dataset cannot be used as it is."""
        return [p for p in self.problems if p.kind != "count"]

    @property
    def size_warnings(self) -> list[Problem]:
        """Split lists whose size differs from the release (a subset, or synthetic data)."""
        return [p for p in self.problems if p.kind == "count"]

    def passed(self, strict: bool = False) -> bool:
        """:attr:`ok`, and with ``strict`` also the release's split sizes."""
        return self.ok and not (strict and self.size_warnings)

    def format(self, limit: int | None = None, strict: bool = False) -> str:
        """Human-readable report: counts, then the problems with their paths, grouped by kind.

        Args:
            limit: List at most this many problems per kind (None: all of them).
            strict: Split sizes that differ from the release are an error (``--strict``).
        """
        lines = [f"{self.dataset} at {self.root}"]
        for split, count in self.counts.items():
            expected = EXPECTED_COUNTS[self.dataset].get(split)
            note = "" if expected in (None, count) else f" (the release has {expected})"
            lines.append(f"  {split}: {count} images{note}")
        for kind in ("count", "missing", "unreadable", "mis-sized"):
            found = [p for p in self.problems if p.kind == kind]
            if found:
                lines.append(f"  {kind}: {len(found)}")
                shown = found if limit is None else found[:limit]
                lines += [f"    {p.path}{': ' + p.detail if p.detail else ''}" for p in shown]
                if len(shown) < len(found):
                    lines.append(f"    ... and {len(found) - len(shown)} more {kind} files")
        if self.size_warnings:
            meta = self.root / META_FILE
            what = f"synthetic data, its settings in {meta}" if meta.is_file() else "a subset?"
            head, tail = (
                ("ERROR (--strict)", "")
                if strict
                else ("WARNING", " --strict makes this an error.")
            )
            lines.append(
                f"  {head}: split sizes differ from the release: {what}; the files themselves are "
                f"fine.{tail}"
            )
        if self.passed(strict):
            lines.append("  OK")
        else:
            sizes = len(self.size_warnings) if strict else 0
            lines.append(f"  {len(self.errors) + sizes} problem(s)")
        return "\n".join(lines)


def _read_shape(path: Path, reader: Callable[[Path], np.ndarray]) -> tuple[int, int]:
    return tuple(reader(path).shape[:2])  # type: ignore[return-value]


def _pascal_readers(shape_of_image: tuple[int, int]) -> dict[str, Callable[[Path], np.ndarray]]:
    """The dataset's own readers (same checks as training) plus the size of every object mask."""

    def parts(path: Path) -> np.ndarray:
        anno = read_mat_variable(path, "anno")
        for obj in anno_objects(anno, str(path)):
            if "mask" in (obj.dtype.names or ()):
                mask_shape = np.asarray(obj["mask"]).shape
                if mask_shape != shape_of_image:
                    raise SizeMismatchError(f"object mask of size {mask_shape}")
        return decode_human_parts(anno, shape_of_image, source=str(path))

    return {
        "semseg": partial(read_semseg, shape=shape_of_image),
        "human_parts": parts,
        "sal": partial(read_saliency, shape=shape_of_image),
        "normals": partial(read_normals, shape=shape_of_image),
        "context": partial(read_context_labels, shape=shape_of_image),
    }


def _nyud_readers() -> dict[str, Callable[[Path], np.ndarray]]:
    return {kind: partial(decode_nyud_file, kind) for kind in NYUD_LAYOUT if kind != "image"}


def _sample_files(
    dataset: str, root: Path, image_id: str, ext: Mapping[str, str]
) -> dict[str, Path]:
    if dataset == "pascal_context":
        return pascal_paths(root, image_id)
    return {
        kind: root / folder / f"{image_id}{ext[kind]}" for kind, (folder, _) in NYUD_LAYOUT.items()
    }


def _check_sample(
    files: Mapping[str, Path], dataset: str, quick: bool, report: DatasetReport
) -> None:
    present = {k: p for k, p in files.items() if p.is_file()}
    report.problems += [Problem("missing", p) for k, p in files.items() if k not in present]
    if quick or "image" not in present:
        return
    try:
        shape = _read_shape(present["image"], read_rgb)
    except _READ_ERRORS as err:
        report.problems.append(Problem("unreadable", present["image"], str(err)))
        return
    readers = _pascal_readers(shape) if dataset == "pascal_context" else _nyud_readers()
    for kind, path in present.items():
        if kind == "image":
            continue
        try:
            label_shape = _read_shape(path, readers[kind])
        except _READ_ERRORS as err:
            kind_of = "mis-sized" if isinstance(err, SizeMismatchError) else "unreadable"
            report.problems.append(Problem(kind_of, path, str(err)))
            continue
        if label_shape != shape:
            report.problems.append(Problem("mis-sized", path, f"size {label_shape}, image {shape}"))


def verify_dataset(
    dataset: str, root: str | Path, quick: bool = False, progress: bool = True
) -> DatasetReport:
    """Check the layout, split counts and files of a PASCAL_MT or NYUD_MT copy.

    Args:
        dataset: ``"pascal_context"`` or ``"nyud"``.
        root: Dataset root.
        quick: Only check that files exist (no decoding).
        progress: Show a progress bar.

    Returns:
        The report; ``report.ok`` is False on any missing, unreadable or mis-sized file or a
        missing split list; split counts other than the release's are ``report.size_warnings``.

    Raises:
        ValueError: On an unknown dataset.
    """
    if dataset not in EXPECTED_COUNTS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose from {sorted(EXPECTED_COUNTS)}.")
    root = Path(root)
    report = DatasetReport(dataset, root)
    if not root.is_dir():
        report.problems.append(Problem("missing", root, "dataset root does not exist"))
        return report
    split_dir = root.joinpath(*_SPLIT_DIRS[dataset])
    all_ids: list[str] = []
    for split, expected in EXPECTED_COUNTS[dataset].items():
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            report.problems.append(Problem("missing", split_file, f"split list of {split!r}"))
            continue
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        report.counts[split] = len(ids)
        if len(ids) != expected:
            report.problems.append(
                Problem("count", split_file, f"{len(ids)} images, expected {expected}")
            )
        all_ids += ids
    ext = {
        kind: resolve_extension(root / folder, all_ids[0], exts) if all_ids else exts[0]
        for kind, (folder, exts) in NYUD_LAYOUT.items()
    }
    for image_id in tqdm(all_ids, desc=f"check {dataset}", unit="images", disable=not progress):
        _check_sample(_sample_files(dataset, root, image_id, ext), dataset, quick, report)
    return report
