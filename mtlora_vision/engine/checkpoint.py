"""Checkpoint I/O for mmengine runs: safe loading, atomic recorded writes, trainable-only states.

* **Safe loading.** :func:`register_checkpoint_io` installs
  :func:`mtlora_vision.safe_load.load_checkpoint_safely` as mmengine's local-file loader, so
  ``load_from`` and resume check the file's integrity and never unpickle code.
* **Atomic, recorded writes.** :class:`AtomicLocalBackend` writes each checkpoint through
  :func:`mtlora_vision.fileio.atomic_write_bytes` (a crash mid-write leaves the previous file
  intact) and then records its size and SHA-256 beside it (``<file>.sha256.json``), which tells a
  complete checkpoint from a damaged one later. :class:`AtomicCheckpointHook` uses it, writes
  ``last_checkpoint`` relative to the work dir after the checkpoint is complete, and deletes an
  outdated checkpoint only after its successor is safely on disk.
* **Trainable-only checkpoints.** :class:`TrainableCheckpointHook` keeps only the trainable
  parameters and the buffers of modules that train (see :func:`trainable_state_dict_keys`); the
  frozen backbone is rebuilt from its source when the model is built.
"""

from __future__ import annotations

import io
import logging
import os
import os.path as osp
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import CheckpointLoader
from torch import Tensor, nn

from mtlora_vision.engine.resume import POINTER, latest_checkpoint, write_pointer
from mtlora_vision.engine.unwrap import unwrap_model
from mtlora_vision.fileio import (
    RECORD_SUFFIX,
    atomic_write_bytes,
    remove_integrity_record,
    temp_target,
    write_integrity_record,
)
from mtlora_vision.models.state_dict_check import check_state_dict_fits
from mtlora_vision.safe_load import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    checkpoint_safe_globals,
    load_checkpoint_safely,
)

__all__ = [
    "ATOMIC_BACKEND_ARGS",
    "CONTENT_KEY",
    "AtomicCheckpointHook",
    "AtomicLocalBackend",
    "DamagedCheckpointError",
    "TrainableCheckpointHook",
    "UnsafeCheckpointError",
    "checkpoint_safe_globals",
    "export_full_weights",
    "load_checkpoint_safely",
    "register_checkpoint_io",
    "remove_stale_temp_files",
    "save_checkpoint_file",
    "trainable_state_dict",
    "trainable_state_dict_keys",
]

logger = logging.getLogger(__name__)

ATOMIC_BACKEND = "atomic_local"
#: ``backend_args`` that make mmengine write checkpoints through :class:`AtomicLocalBackend`.
ATOMIC_BACKEND_ARGS: Mapping[str, str] = {"backend": ATOMIC_BACKEND}
#: ``checkpoint["meta"]`` key recording whether ``state_dict`` is ``"trainable"`` or ``"full"``.
CONTENT_KEY = "state_dict_content"


def load_from_local_safe(filename: str, map_location: Any = None) -> Any:
    """Load a local file for mmengine's ``CheckpointLoader`` (logged as backend "local_safe")."""
    return load_checkpoint_safely(filename, map_location=map_location)


def write_checkpoint_bytes(data: bytes, path: str | Path) -> None:
    """Write checkpoint bytes atomically, then record their size and SHA-256 beside them.

    The old record goes first: a crash before the new one is written leaves a complete file
    without a record (checked by its zip CRC-32s), never a record that calls it damaged.
    """
    remove_integrity_record(path)
    atomic_write_bytes(data, path)
    write_integrity_record(path, data)


def save_checkpoint_file(checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` a checkpoint through :func:`write_checkpoint_bytes` (atomic, recorded)."""
    with io.BytesIO() as f:
        torch.save(dict(checkpoint), f)
        write_checkpoint_bytes(f.getvalue(), path)


def _is_checkpoint_temp(name: str) -> bool:
    target = temp_target(name)
    if target is None:
        return False
    return target == POINTER or target.endswith((".pth", ".pth" + RECORD_SUFFIX))


def remove_stale_temp_files(folder: str | Path) -> list[str]:
    """Delete temporary files that an interrupted checkpoint write left in ``folder``."""
    folder = str(folder)
    if not osp.isdir(folder):
        return []
    stale = [osp.join(folder, name) for name in os.listdir(folder) if _is_checkpoint_temp(name)]
    for path in stale:
        os.remove(path)
        logger.info("Removed %s left by an interrupted checkpoint write.", path)
    return stale


class AtomicLocalBackend(LocalBackend):
    """mmengine local file backend: atomic writes, with an integrity record for each file."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Write bytes atomically and record them (see :func:`write_checkpoint_bytes`)."""
        write_checkpoint_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = "utf-8") -> None:
        """Write text atomically (see :func:`mtlora_vision.fileio.atomic_write_bytes`)."""
        atomic_write_bytes(obj.encode(encoding), filepath)

    def remove(self, filepath: str | Path) -> None:
        """Remove a file and its integrity record."""
        remove_integrity_record(filepath)
        super().remove(filepath)


def register_checkpoint_io() -> None:
    """Install the safe local loader and the ``atomic_local`` backend in mmengine (idempotent).

    Called by :class:`AtomicCheckpointHook` when it is built, i.e. when the Runner is built and
    before it loads or resumes a checkpoint; tools may also call it directly.
    """
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_safe, force=True)
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


class AtomicCheckpointHook(CheckpointHook):
    """mmengine ``CheckpointHook`` whose writes cannot corrupt or misplace the latest checkpoint.

    Checkpoints go through :class:`AtomicLocalBackend` (unless ``backend_args`` says otherwise),
    ``last_checkpoint`` is replaced atomically after the checkpoint is complete and holds a path
    relative to the work dir, and with ``max_keep_ckpts`` the oldest checkpoint is deleted only
    after the new one is written (mmengine deletes first, which with ``max_keep_ckpts=1`` leaves
    nothing if the write then fails). Three more fixes of mmengine 0.10.7's hook:

    * ``resume=True`` without ``load_from`` resumes from
      :func:`mtlora_vision.engine.resume.latest_checkpoint` (most advanced complete checkpoint),
      not from whatever ``last_checkpoint`` names.
    * ``save_best`` ignores a validation that runs before training (e.g.
      ``ValidateBeforeTrainHook``): mmengine sets the hook up only in ``before_train``.
    * Best-checkpoint paths restored from a resumed checkpoint are taken in this run's folder, so
      a copied work dir never deletes the original's files.

    Args:
        **kwargs: Every argument of mmengine's ``CheckpointHook`` (interval, by_epoch,
            max_keep_ckpts, save_last, save_best, ...), passed through unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("backend_args", dict(ATOMIC_BACKEND_ARGS))
        register_checkpoint_io()
        super().__init__(**kwargs)
        self._set_up = False

    def before_run(self, runner) -> None:
        """Pick the checkpoint to resume when the config says ``resume=True`` without a path."""
        if runner._resume and runner._load_from is None:
            # mmengine's find_latest_checkpoint trusts last_checkpoint blindly: choose here.
            point = latest_checkpoint(runner.work_dir)
            if point is None:
                runner.logger.warning(f"resume: no checkpoint in {runner.work_dir}; starting.")
                runner._resume = False
            else:
                runner._load_from = point.path

    def before_train(self, runner) -> None:
        """Set up as mmengine does, localise best paths, clear temporary files of a crash."""
        super().before_train(runner)
        self._set_up = True
        # mmengine restores absolute best paths from the message hub, maybe another run's folder.
        if getattr(self, "best_ckpt_path", None):
            self.best_ckpt_path = self._own_path(self.best_ckpt_path)
        for key, path in getattr(self, "best_ckpt_path_dict", {}).items():
            self.best_ckpt_path_dict[key] = self._own_path(path) if path else path
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            remove_stale_temp_files(self.out_dir)

    def _own_path(self, path: str) -> str:
        """``path`` moved into this run's ``out_dir`` (it may come from a copied work dir)."""
        return self.file_backend.join_path(self.out_dir, osp.basename(str(path)))

    def after_val_epoch(self, runner, metrics: dict) -> None:
        """Track the best checkpoint, but not for a validation that runs before training."""
        if not self._set_up:  # mmengine builds file_backend in before_train, after this validation
            if self.save_best is not None:
                runner.logger.info("save_best: the validation before training is not a candidate.")
            return
        super().after_val_epoch(runner, metrics)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            # Recorded before saving so that the checkpoint lists itself, as in mmengine.
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        write_pointer(runner.work_dir, str(self.last_ckpt))
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)


def trainable_state_dict_keys(model: nn.Module) -> set[str]:
    """Names of the state-dict entries that a trainable-only checkpoint keeps.

    Kept: every parameter with ``requires_grad``, and the persistent buffers of each module that
    has a trainable parameter (itself or in its children, e.g. BatchNorm running statistics in the
    heads) or has no parameter at all (pure state such as the DWA loss history). Dropped: frozen
    parameters, the buffers of modules whose parameters are all frozen, and non-persistent buffers
    (they are never in a state dict).
    """
    keys: set[str] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        keys.update(
            dot + name
            for name, param in module.named_parameters(recurse=False, remove_duplicate=False)
            if param.requires_grad
        )
        params = list(module.parameters())
        if not params or any(p.requires_grad for p in params):
            keys.update(dot + name for name, _ in module.named_buffers(recurse=False))
    return keys & model.state_dict().keys()


def filter_state_dict(state_dict: Mapping[str, Tensor], keys: Iterable[str]) -> OrderedDict:
    """Keep the entries named in ``keys``, in order, with the ``_metadata`` torch uses on load."""
    keep = set(keys)
    out = OrderedDict((k, v) for k, v in state_dict.items() if k in keep)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def trainable_state_dict(model: nn.Module) -> OrderedDict:
    """State dict of ``model`` restricted to :func:`trainable_state_dict_keys`."""
    return filter_state_dict(model.state_dict(), trainable_state_dict_keys(model))


class TrainableCheckpointHook(Hook):
    """Save only trainable weights (plus optimizer, schedulers and message hub, as mmengine does).

    On load, a trainable-only checkpoint is completed with the model's own frozen entries (the
    frozen weights come from their source, e.g. the pretrained backbone file read when the model
    is built), so mmengine reports as missing only keys that really are missing.

    Args:
        full_weights: Save the full state dict instead (a self-contained export).
    """

    priority = "NORMAL"

    def __init__(self, full_weights: bool = False) -> None:
        self.full_weights = full_weights

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Filter ``checkpoint["state_dict"]`` and record what it holds in its meta."""
        meta = checkpoint.setdefault("meta", {})
        model = unwrap_model(runner.model)
        backbone = getattr(model, "backbone", None)
        no_source = backbone is not None and getattr(backbone, "pretrained", "n/a") is None
        if self.full_weights or no_source:
            # Without a pretrained file the frozen weights are random and cannot be reloaded.
            meta[CONTENT_KEY] = "full"
            return
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = filter_state_dict(state, trainable_state_dict_keys(model))
        meta[CONTENT_KEY] = "trainable"
        runner.logger.debug(
            f"Trainable-only checkpoint: {len(checkpoint['state_dict'])} of {len(state)} entries."
        )

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Complete a trainable-only state dict with frozen entries, then check it strictly.

        Raises:
            KeyError: If the checkpoint misses entries of the model or has entries the model
                does not have (e.g. built for other tasks or ranks), naming them.
            ValueError: If an entry's shape differs from the model's.
        """
        model = unwrap_model(runner.model)
        state = checkpoint["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        reference = model.state_dict()
        if checkpoint.get("meta", {}).get(CONTENT_KEY) == "trainable":
            trainable = trainable_state_dict_keys(model)
            filled = [k for k in reference if k not in state and k not in trainable]
            state.update({k: reference[k] for k in filled})
            runner.logger.info(
                f"Trainable-only checkpoint: {len(filled)} frozen entries kept from the model "
                "as built."
            )
        check_state_dict_fits(reference, state)
        checkpoint["state_dict"] = state


def export_full_weights(model: nn.Module, filename: str | Path) -> None:
    """Write ``{"state_dict": full state dict, "meta": ...}`` atomically, e.g. for deployment."""
    state = OrderedDict((k, v.detach().cpu()) for k, v in unwrap_model(model).state_dict().items())
    save_checkpoint_file({"state_dict": state, "meta": {CONTENT_KEY: "full"}}, filename)
