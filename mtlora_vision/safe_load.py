"""The one way this package reads a checkpoint: integrity first, then a restricted unpickler.

Every reader (resume through mmengine's Runner, ``tools/test.py``, ``init_model``, the converter
of the official release, ImageNet Swin weights) calls :func:`load_checkpoint_safely`:

1. **Integrity.** :func:`mtlora_vision.fileio.check_file_integrity` compares the file with the
   size and SHA-256 recorded when it was saved, or without a record checks its zip CRC-32s. A
   truncated, empty or altered file raises :class:`DamagedCheckpointError` naming the file and
   what is wrong, before anything is unpickled.
2. **No code from the file.** Unpickling is ``torch.load(weights_only=True)``: torch's restricted
   unpickler, which rebuilds tensors, containers and plain values and calls nothing else. Beyond
   torch's own list it allows exactly :func:`checkpoint_safe_globals`: mmengine's
   ``HistoryBuffer``, numpy arrays, dtypes and scalars (mmengine's message hub), and inert
   stand-ins for the few foreign classes of known checkpoints (:data:`FOREIGN_CLASSES`, e.g. the
   yacs ``CfgNode`` config of the official MTLoRA release), read without importing their module.
   Any other type raises :class:`UnsafeCheckpointError` naming it; nothing falls back to
   ``weights_only=False``.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only`` (open-mmlab/mmengine#1655);
:func:`mtlora_vision.engine.checkpoint.register_checkpoint_io` installs this loader as its
local-file loader instead.
"""

from __future__ import annotations

import os.path as osp
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from mtlora_vision.errors import InputError
from mtlora_vision.fileio import DamagedFileError, check_file_integrity

#: Foreign classes known to occur in checkpoints people load, read as :class:`ForeignObject`.
#: The official MTLoRA release pickles its yacs config (``config``) next to the weights.
FOREIGN_CLASSES: tuple[str, ...] = ("yacs.config.CfgNode",)
_FOREIGN_MARK = "_mtlora_vision_foreign_type"
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


class UnsafeCheckpointError(InputError, ValueError, pickle.UnpicklingError):
    """A checkpoint holds a type outside the allow-list; it was not unpickled."""


class DamagedCheckpointError(DamagedFileError):
    """A checkpoint is truncated, altered or not a checkpoint; it was not loaded.

    Attributes:
        path: The file.
        reason: What is wrong with it, e.g. ``"it is truncated: 10 bytes, 99 recorded"``.
    """

    def __init__(self, message: str, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason or message


class ForeignObject(dict):
    """Inert stand-in for an instance of a foreign dict-like class (e.g. a yacs ``CfgNode``).

    Holds the items as a plain dict (nested stand-ins for nested nodes), the foreign class's
    dotted name in :attr:`foreign_type`, and the instance attributes that were pickled in
    :attr:`pickled_state`. Items can be read as attributes (``cfg.MODEL.TYPE``), as in yacs.
    """

    def __init__(self, foreign_type: str, items: dict, pickled_state: dict) -> None:
        super().__init__(items)
        self.foreign_type = foreign_type
        self.pickled_state = pickled_state

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        raise AttributeError(f"{self.foreign_type} stand-in has no item {name!r}")


def _stand_in_class(full_name: str) -> type:
    """A class to register under ``full_name``: unpickling it makes a marked ``OrderedDict``.

    torch's unpickler only fills exact ``dict``/``OrderedDict`` objects (SETITEMS) and sets the
    attributes of exact ``OrderedDict`` objects (BUILD), so the stand-in is created as one and
    replaced by a :class:`ForeignObject` after loading (see :func:`_replace_stand_ins`).
    """

    class StandIn:
        def __new__(cls, *args: Any) -> OrderedDict:
            inert: OrderedDict = OrderedDict()
            inert.__dict__[_FOREIGN_MARK] = full_name
            return inert

    StandIn.__qualname__ = f"StandIn[{full_name}]"
    return StandIn


_STAND_INS = {name: _stand_in_class(name) for name in FOREIGN_CLASSES}


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
        *((cls, name) for name, cls in _STAND_INS.items()),
    ]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct")]
        allowed += [(multiarray.scalar, f"{module}.scalar")]
    return allowed


def _replace_stand_ins(obj: Any) -> Any:
    """Swap marked ``OrderedDict`` stand-ins for :class:`ForeignObject` (containers in place)."""
    if isinstance(obj, OrderedDict) and _FOREIGN_MARK in vars(obj):
        state = dict(vars(obj))
        name = state.pop(_FOREIGN_MARK)
        return ForeignObject(name, {k: _replace_stand_ins(v) for k, v in obj.items()}, state)
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _replace_stand_ins(value)
    elif isinstance(obj, list):
        obj[:] = [_replace_stand_ins(v) for v in obj]
    elif type(obj) is tuple:
        return tuple(_replace_stand_ins(v) for v in obj)
    return obj


def _refusal_message(path: str, err: Exception) -> str:
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, OSError):  # legacy (non-zip) files cannot be listed
        names = []
    names = [n for n in names if n not in _STAND_INS and n != "builtins.getattr"]
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    keys = ("GLOBAL", "allow-list", "Unsupported", "Can only")
    reason = next((line for line in lines if any(k in line for k in keys)), lines[0])
    reason = reason.split("WeightsUnpickler error:")[-1].strip()
    found = f"forbidden type(s) {names}" if names else f"content refused ({reason})"
    return (
        f"Refusing to load checkpoint {path!r}: {found}. Only tensors, containers, plain values, "
        "numpy data, mmengine's HistoryBuffer and the stand-ins of "
        f"{list(FOREIGN_CLASSES)} are read (mtlora_vision.safe_load.checkpoint_safe_globals()); "
        "nothing in the file was run. If you trust the file and the type is plain data, pass it "
        "in extra_safe_globals."
    )


def _damaged(path: str, reason: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"Checkpoint {path!r} is damaged: {reason}. Use another checkpoint (e.g. an earlier "
        "epoch_N.pth) or copy the file again.",
        path,
        reason,
    )


def _is_damage(err: BaseException) -> bool:
    """Whether a ``torch.load`` error means unreadable bytes (not a device or type problem)."""
    if isinstance(err, (EOFError, zipfile.BadZipFile)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("PytorchStreamReader" in text or "EOF" in text)


def _load_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as err:
        raise _damaged(path, f"safetensors cannot read it ({err})") from None


def check_checkpoint_integrity(filename: str | Path) -> str:
    """Check a checkpoint file's integrity without unpickling it; say how it was checked.

    Raises:
        FileNotFoundError: If the file does not exist.
        DamagedCheckpointError: Naming the file and what is wrong with it.
    """
    path = osp.expanduser(str(filename))
    if not osp.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist; check the path.")
    try:
        return check_file_integrity(path)
    except DamagedFileError as err:
        raise _damaged(path, str(err)) from None


def load_checkpoint_safely(
    filename: str | Path,
    map_location: str | torch.device | Callable | None = None,
    extra_safe_globals: Iterable[Callable | tuple[Callable, str]] = (),
) -> Any:
    """Check a checkpoint's integrity, then unpickle it with the restricted unpickler.

    Args:
        filename: Local checkpoint path (``~`` is expanded); ``.safetensors`` files are read
            with safetensors (which holds tensors only).
        map_location: As for ``torch.load``.
        extra_safe_globals: More types to allow, for checkpoints you trust.

    Returns:
        The unpickled checkpoint (usually a dict); foreign objects of :data:`FOREIGN_CLASSES`
        come back as :class:`ForeignObject`.

    Raises:
        FileNotFoundError: If the file does not exist.
        DamagedCheckpointError: If the file is truncated, altered, empty or not a checkpoint.
        UnsafeCheckpointError: If the file holds a type outside the allow-list.
    """
    path = osp.expanduser(str(filename))
    if not osp.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist; check the path.")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    check_checkpoint_integrity(path)
    checkpoint = _restricted_load(path, map_location, extra_safe_globals, mmap=False)
    return _replace_stand_ins(checkpoint)


def peek_reads_in_full(filename: str | Path) -> bool:
    """Whether :func:`peek_checkpoint` reads the whole file: torch's legacy (non-zip) format."""
    return not zipfile.is_zipfile(osp.expanduser(str(filename)))


def peek_checkpoint(filename: str | Path, check_legacy: bool = True) -> Any:
    """Unpickle a checkpoint's structure cheaply, for its ``meta``; a zip file is not checked.

    Torch's zip files are memory-mapped, so tensor data is not read; a file in torch's legacy
    format is loaded in full, so its integrity is checked first. The same restricted unpickler as
    :func:`load_checkpoint_safely` applies. Whatever is chosen from the result must still pass
    :func:`check_checkpoint_integrity` before it is trusted (``--resume`` does:
    :func:`mtlora_vision.engine.resume.latest_checkpoint`).

    Args:
        filename: Local checkpoint path (``~`` is expanded).
        check_legacy: Check a legacy-format file before reading it; callers that have just
            checked it pass False, so that it is checked once.

    Raises:
        DamagedCheckpointError: If the file's structure cannot be read.
        UnsafeCheckpointError: If it holds a type outside the allow-list.
    """
    path = osp.expanduser(str(filename))
    mmap = not peek_reads_in_full(path)
    if not mmap and check_legacy:
        check_checkpoint_integrity(path)  # empty, truncated zip or unknown format: say which
    return _replace_stand_ins(_restricted_load(path, "cpu", (), mmap=mmap))


def _restricted_load(
    path: str,
    map_location: str | torch.device | Callable | None,
    extra_safe_globals: Iterable[Callable | tuple[Callable, str]],
    mmap: bool,
) -> Any:
    """``torch.load`` with the restricted unpickler and :func:`checkpoint_safe_globals`."""
    allowed = checkpoint_safe_globals() + list(extra_safe_globals)
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            if "Unsupported operand" in str(err):  # not a pickle opcode: damage, not a refusal
                raise _damaged(path, "its pickle data cannot be read") from None
            raise UnsafeCheckpointError(_refusal_message(path, err)) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
            if _is_damage(err):
                raise _damaged(path, f"torch cannot read it ({err})") from None
            raise
