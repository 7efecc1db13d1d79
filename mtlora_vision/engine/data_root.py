"""One ``data_root`` setting for every data loader of a config.

Configs state the dataset folder once, as the top-level ``data_root``, and their loaders use it.
mmengine's pure-Python configs resolve that variable when the file is read, so a later
``--cfg-options data_root=DIR`` would otherwise change the top-level value only. The train and
test tools therefore pass the final value on to every loader's dataset: ``--data-root DIR`` and
``--cfg-options data_root=DIR`` both move the train, val and test loaders together. A loader
whose ``dataset.data_root`` is itself given in ``--cfg-options`` keeps that value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmengine.config import Config

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def _datasets(loader: Mapping) -> list[Mapping]:
    """The dataset dicts of a loader: its ``dataset``, or the parts of a concatenated one."""
    dataset = loader.get("dataset")
    if not isinstance(dataset, Mapping):
        return []
    parts = dataset.get("datasets")
    if isinstance(parts, (list, tuple)):
        return [d for d in parts if isinstance(d, Mapping)]
    inner = dataset.get("dataset")  # wrappers such as RepeatDataset
    return [inner] if isinstance(inner, Mapping) else [dataset]


def loader_data_roots(cfg: Config) -> dict[str, Any]:
    """``{loader name: data_root}`` of every loader of ``cfg`` that has one."""
    roots = {}
    for name in LOADERS:
        loader = cfg.get(name)
        if isinstance(loader, Mapping):
            for dataset in _datasets(loader):
                if "data_root" in dataset:
                    roots[name] = dataset["data_root"]
    return roots


def apply_data_root(
    cfg: Config, data_root: str | None = None, cfg_options: Mapping[str, Any] | None = None
) -> str | None:
    """Make the top-level ``data_root`` drive every loader (in place).

    Args:
        cfg: Loaded config with ``--cfg-options`` merged.
        data_root: ``--data-root`` from the command line; wins over ``cfg_options``.
        cfg_options: The ``--cfg-options`` given, to find ``data_root`` and per-loader overrides.

    Returns:
        The data root set on the loaders, or None when neither option names one.
    """
    options = dict(cfg_options or {})
    root = data_root if data_root is not None else options.get("data_root")
    if root is None:
        return None
    cfg.data_root = str(root)
    for name in LOADERS:
        loader = cfg.get(name)
        if not isinstance(loader, Mapping):
            continue
        if any(key.startswith(f"{name}.dataset") and key.endswith("data_root") for key in options):
            continue  # the user chose this loader's folder explicitly
        for dataset in _datasets(loader):
            dataset["data_root"] = str(root)
    return str(root)
