"""Checkpoint I/O for mmengine runs: safe loading, atomic writes, trainable-only state dicts.

* **Safe loading.** mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, which torch>=2.6
  treats as ``weights_only=True``; resuming then fails on mmengine's own objects
  (open-mmlab/mmengine#1655). :func:`load_checkpoint_safely` keeps ``weights_only=True`` and allows
  exactly the extra types a Runner checkpoint holds (found by saving one and reading the errors):
  the message hub's ``HistoryBuffer`` (whose state also holds its ``min``/``max``/``mean``/
  ``current`` methods, pickled as ``getattr(HistoryBuffer, name)``), and numpy arrays, dtypes and
  scalars (its history arrays, metric values). Anything else is refused with
  :class:`UnsafeCheckpointError` naming the types and the file; nothing falls back to unpickling
  arbitrary code. :func:`register_checkpoint_io` installs it as mmengine's local-file loader.
* **Atomic writes.** :class:`AtomicLocalBackend` writes to a temporary file in the target folder,
  fsyncs it and moves it over the target, so a crash mid-write leaves the previous file
  intact. :class:`AtomicCheckpointHook` uses it, writes ``last_checkpoint`` the same way, and
  deletes an outdated checkpoint only after its successor is safely on disk.
* **Trainable-only checkpoints.** :class:`TrainableCheckpointHook` keeps only the trainable
  parameters and the buffers of modules that train (see :func:`trainable_state_dict_keys`); the
  frozen backbone is rebuilt from its source when the model is built.
"""

from __future__ import annotations

import io
import logging
import os
import os.path as osp
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.runner import CheckpointLoader
from torch import Tensor, nn

from mtlora_vision.models.state_dict_check import check_state_dict_fits

logger = logging.getLogger(__name__)

ATOMIC_BACKEND = "atomic_local"
#: ``backend_args`` that make mmengine write checkpoints through :class:`AtomicLocalBackend`.
ATOMIC_BACKEND_ARGS: Mapping[str, str] = {"backend": ATOMIC_BACKEND}
#: ``checkpoint["meta"]`` key recording whether ``state_dict`` is ``"trainable"`` or ``"full"``.
CONTENT_KEY = "state_dict_content"
_TMP_SUFFIX = ".tmp"
_HISTORY_BUFFER_METHODS = frozenset({"min", "max", "mean", "current"})
_NUMPY_DTYPES = (
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
)


class UnsafeCheckpointError(ValueError, pickle.UnpicklingError):
    """A checkpoint holds a type outside the allow-list; it was not unpickled."""


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` that only resolves ``HistoryBuffer``'s statistics."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not on the checkpoint allow-list")


def checkpoint_safe_globals() -> list[Callable | tuple[Callable, str]]:
    """Return the types allowed in checkpoints beyond ``torch.load(weights_only=True)``'s own."""
    try:
        from numpy._core import multiarray  # numpy>=2; files written with numpy 1 say numpy.core
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    allowed: list[Callable | tuple[Callable, str]] = [
        HistoryBuffer,
        (_history_buffer_getattr, "builtins.getattr"),
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in _NUMPY_DTYPES),
    ]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct")]
        allowed += [(multiarray.scalar, f"{module}.scalar")]
    return allowed


def _refusal_message(path: str, err: Exception) -> str:
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, OSError):  # legacy (non-zip) files cannot be listed
        names = []
    reason = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
    found = f"forbidden type(s) {names}" if names else f"content refused ({reason})"
    return (
        f"Refusing to load checkpoint {path!r}: {found}. Only tensors, containers, numpy data and "
        "mmengine's HistoryBuffer are allowed (torch.load weights_only=True plus "
        "mtlora_vision.engine.checkpoint.checkpoint_safe_globals()). If you trust the file and the "
        "type is plain data, pass it in extra_safe_globals."
    )


def load_checkpoint_safely(
    filename: str | Path,
    map_location: str | torch.device | Callable | None = None,
    extra_safe_globals: Iterable[Callable | tuple[Callable, str]] = (),
) -> Any:
    """Load a checkpoint with ``weights_only=True`` and the explicit allow-list.

    Args:
        filename: Local checkpoint path (``~`` is expanded).
        map_location: As for ``torch.load``.
        extra_safe_globals: More types to allow, for checkpoints you trust.

    Returns:
        The unpickled checkpoint (usually a dict).

    Raises:
        FileNotFoundError: If the file does not exist.
        UnsafeCheckpointError: If the file holds a type outside the allow-list.
    """
    path = osp.expanduser(str(filename))
    if not osp.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist; check the path.")
    allowed = checkpoint_safe_globals() + list(extra_safe_globals)
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(_refusal_message(path, err)) from None


def load_from_local_safe(filename: str, map_location: str | Callable | None = None) -> Any:
    """Load a local file for mmengine's ``CheckpointLoader`` (logged as backend "local_safe")."""
    return load_checkpoint_safely(filename, map_location=map_location)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a part.

    The bytes go to a hidden temporary file in the same folder, are fsynced, and replace ``path``
    with ``os.replace``; the folder is fsynced so the rename survives a power loss.
    """
    path = osp.abspath(str(path))
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{osp.basename(path)}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def _is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write_bytes` for a checkpoint."""
    ours = ".pth." in name or name.startswith(".last_checkpoint.")
    return name.startswith(".") and name.endswith(_TMP_SUFFIX) and ours


def remove_stale_temp_files(folder: str | Path) -> list[str]:
    """Delete temporary files that an interrupted :func:`atomic_write_bytes` left in ``folder``."""
    folder = str(folder)
    if not osp.isdir(folder):
        return []
    stale = [osp.join(folder, name) for name in os.listdir(folder) if _is_temp_name(name)]
    for path in stale:
        os.remove(path)
        logger.info("Removed %s left by an interrupted checkpoint write.", path)
    return stale


class AtomicLocalBackend(LocalBackend):
    """mmengine local file backend whose ``put``/``put_text`` are atomic (no partial files)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Write bytes atomically (see :func:`atomic_write_bytes`)."""
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = "utf-8") -> None:
        """Write text atomically (see :func:`atomic_write_bytes`)."""
        atomic_write_bytes(obj.encode(encoding), filepath)


def register_checkpoint_io() -> None:
    """Install the safe local loader and the ``atomic_local`` backend in mmengine (idempotent).

    Called by :class:`AtomicCheckpointHook` when it is built, i.e. when the Runner is built and
    before it loads or resumes a checkpoint; tools may also call it directly.
    """
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_safe, force=True)
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


class AtomicCheckpointHook(CheckpointHook):
    """mmengine ``CheckpointHook`` whose writes cannot corrupt the latest checkpoint.

    Checkpoints go through :class:`AtomicLocalBackend` (unless ``backend_args`` says otherwise),
    ``last_checkpoint`` is replaced atomically after the checkpoint is complete, and with
    ``max_keep_ckpts`` the oldest checkpoint is deleted only after the new one is written (mmengine
    deletes first, which with ``max_keep_ckpts=1`` leaves nothing if the write then fails).

    Args:
        **kwargs: Every argument of mmengine's ``CheckpointHook`` (interval, by_epoch,
            max_keep_ckpts, save_last, save_best, ...), passed through unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("backend_args", dict(ATOMIC_BACKEND_ARGS))
        register_checkpoint_io()
        super().__init__(**kwargs)

    def before_train(self, runner) -> None:
        """Set up as mmengine does, then clear temporary files of interrupted writes."""
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            remove_stale_temp_files(self.out_dir)

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
        atomic_write_bytes(
            str(self.last_ckpt).encode(), osp.join(runner.work_dir, "last_checkpoint")
        )
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


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
        model = _unwrap(runner.model)
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
        model = _unwrap(runner.model)
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
    state = OrderedDict((k, v.detach().cpu()) for k, v in _unwrap(model).state_dict().items())
    checkpoint = {"state_dict": state, "meta": {CONTENT_KEY: "full"}}
    with io.BytesIO() as f:
        torch.save(checkpoint, f)
        atomic_write_bytes(f.getvalue(), filename)
