"""What the multi-task datasets share: split lists, file checks, the transform, the sample contract.

A sample follows ``docs/design.md`` section 1::

    {"inputs": float32 (3, H, W), "data_samples": {"id", "ori_shape", "img_shape", "targets"}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from mtlora_vision.datasets.sampler import SampleKey, augmentation_seed
from mtlora_vision.datasets.synthetic import META_FILE, ensure_synthetic_dataset
from mtlora_vision.datasets.transforms import MultiTaskTransform
from mtlora_vision.datasets.worker import configure_data_worker
from mtlora_vision.tasks import NUM_OUTPUTS, check_tasks

logger = logging.getLogger(__name__)

_SYNTHESIZE_KEYS = ("root", "num_train", "num_val", "size", "seed")


def read_split_ids(split_file: Path, split: str, splits_dir_hint: str) -> list[str]:
    """Image ids of a split list (one per line; blank lines skipped).

    Raises:
        FileNotFoundError: If the list is missing; names the splits that exist.
        ValueError: If it is empty or has duplicates.
    """
    if not split_file.is_file():
        found = (
            sorted(p.stem for p in split_file.parent.glob("*.txt"))
            if split_file.parent.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"Split list {str(split_file)!r} for split {split!r} does not exist; splits found in "
            f"{splits_dir_hint}: {found}."
        )
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"Split list {str(split_file)!r} is empty.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"Split list {str(split_file)!r} lists some ids more than once.")
    return ids


def check_files_exist(paths: Sequence[Path], prepare_hint: str) -> None:
    """Raise naming the first missing files, with the count of all missing ones."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(repr(str(p)) for p in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} dataset file(s) are missing, e.g. {shown}. Check the dataset with "
            f"{prepare_hint} --check."
        )


class MultiTaskDataset(Dataset):
    """Base of the multi-task datasets; subclasses list their files and decode one sample.

    Subclasses set the class variables, call :meth:`_setup` from ``__init__`` and implement
    :meth:`load_sample`.
    """

    dataset_name: ClassVar[str]
    available_tasks: ClassVar[tuple[str, ...]]
    classes: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    data_root: Path
    split: str
    tasks: tuple[str, ...]
    ids: list[str]
    transform: MultiTaskTransform

    @classmethod
    def prepare_command(cls, data_root: Path) -> str:
        """The command that prepares this dataset at ``data_root``."""
        return f"`python tools/prepare_dataset.py {cls.dataset_name} --root {data_root}`"

    def _setup(
        self,
        data_root: str | Path,
        split: str,
        tasks: Sequence[str],
        synthesize_if_missing: Mapping[str, Any] | None,
    ) -> None:
        self.data_root = Path(data_root).expanduser()
        self.synthetic_written = False  # whether this dataset wrote its synthetic data itself
        only_at = None
        if synthesize_if_missing is not None:
            only_at = self._synthesize(synthesize_if_missing)
        if self.data_root.exists() and not self.data_root.is_dir():
            raise NotADirectoryError(
                f"{type(self).__name__} data_root {str(self.data_root)!r} is a file, not a dataset "
                "folder; pass the folder that holds the release (e.g. data/PASCAL_MT)."
            )
        if not self.data_root.is_dir():
            raise FileNotFoundError(
                f"{type(self).__name__} data_root {str(self.data_root)!r} does not exist. Prepare "
                f"the dataset there with {self.prepare_command(self.data_root)} (--archive FILE or "
                "--download), or write synthetic data with `python tools/make_synthetic_dataset.py "
                f"{self.data_root} --dataset {self.dataset_name}`."
                + (
                    f" (The config writes synthetic data only at its own {str(only_at)!r}.)"
                    if only_at is not None
                    else ""
                )
            )
        self.split = split
        # A single task may be given as a plain string (e.g. from --cfg-options ...tasks=sal).
        tasks = (tasks,) if isinstance(tasks, str) else tasks
        self.tasks = check_tasks(tasks, self.available_tasks, what=f"{type(self).__name__}")

    def _synthesize(self, options: Mapping[str, Any]) -> Path | None:
        """Write a synthetic dataset if ``data_root`` is missing and is ``options["root"]``.

        Returns:
            ``options["root"]`` when ``data_root`` is elsewhere (nothing is written there, so a
            mistyped path is an error rather than a new dataset), else None.
        """
        unknown = sorted(set(options) - set(_SYNTHESIZE_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown synthesize_if_missing keys {unknown}; allowed: {list(_SYNTHESIZE_KEYS)}."
            )
        if "root" not in options:
            raise ValueError(
                "synthesize_if_missing needs 'root': the one folder where synthetic data may be "
                "written (the config's own data_root), so a changed data_root is never filled."
            )
        root = Path(options["root"]).expanduser()
        if root.resolve() != self.data_root.resolve():
            return root
        # True also when another process of the same run (a DDP rank) wrote it meanwhile.
        self.synthetic_written = not self.data_root.exists()
        ensure_synthetic_dataset(
            self.data_root,
            self.dataset_name,
            num_train=int(options.get("num_train", 16)),
            num_val=int(options.get("num_val", 8)),
            size=options.get("size"),
            seed=int(options.get("seed", 0)),
        )
        return None

    def _warn_if_not_release(self, count: int, release: str, sizes: Mapping[str, int]) -> None:
        """Warn that metrics are not comparable when the split is synthetic or not the release's.

        Args:
            count: Images in this split.
            release: The release's name (``PASCAL_MT``).
            sizes: The release's images per split.
        """
        name, split = type(self).__name__, self.split
        if self.is_synthetic:
            logger.warning(
                "%s split %r at %s is synthetic data (%d images; its settings in %s): metrics are "
                "not comparable with published ones.",
                *(name, split, self.data_root, count, self.data_root / META_FILE),
            )
        elif split in sizes and count != sizes[split]:
            logger.warning(
                "%s split %r at %s has %d images, the %s release %d: a subset or other data; "
                "metrics are not comparable with published ones.",
                *(name, split, self.data_root, count, release, sizes[split]),
            )

    @property
    def is_synthetic(self) -> bool:
        """Whether ``data_root`` holds synthetic data this package wrote (it has their settings)."""
        return (self.data_root / META_FILE).is_file()

    @property
    def metainfo(self) -> dict[str, Any]:
        """Dataset description for mmengine's evaluator and visualiser."""
        return {
            "dataset": self.dataset_name,
            "split": self.split,
            "tasks": self.tasks,
            "num_outputs": {t: NUM_OUTPUTS[self.dataset_name][t] for t in self.tasks},
            "classes": {t: names for t, names in self.classes.items() if t in self.tasks},
        }

    def __len__(self) -> int:
        return len(self.ids)

    def load_sample(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Decode image ``index`` and its targets at the original size (``MultiTaskTransform``)."""
        raise NotImplementedError

    def __getitem__(self, index: int | SampleKey) -> dict[str, Any]:
        """Return sample ``index`` in the format of ``docs/design.md`` section 1.

        A :class:`SampleKey` (from ``EpochSeededSampler``) makes the random augmentation a pure
        function of its ``(seed, epoch, index)``; a plain index draws it from Python's ``random``.
        """
        configure_data_worker()
        seed = None
        if isinstance(index, SampleKey):
            seed = augmentation_seed(index)
            index = index.index
        image, targets = self.load_sample(index)
        inputs, out_targets = self.transform(image, targets, seed=seed)
        return {
            "inputs": inputs,
            "data_samples": {
                "id": self.ids[index],
                "ori_shape": (int(image.shape[0]), int(image.shape[1])),
                "img_shape": (int(inputs.shape[-2]), int(inputs.shape[-1])),
                "targets": {task: out_targets[task] for task in self.tasks},
            },
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(data_root={str(self.data_root)!r}, split={self.split!r}, "
            f"tasks={list(self.tasks)}, num_samples={len(self)})"
        )
