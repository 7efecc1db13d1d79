"""A cache of derived labels kept outside the dataset folder and rebuilt when the dataset changes.

Entries are keyed by the size and modification time of the files they derive from, so an edited or
replaced dataset file invalidates them. Label maps are stored as zlib-compressed raw bytes behind a
small header (decoding one costs about a tenth of a PNG's). Writes are atomic
(:func:`mtlora_vision.fileio.atomic_write_bytes`), so data-loader workers and DDP ranks can share
one cache. A cache that cannot be written is skipped with a warning: it only costs speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from mtlora_vision.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MTLORA_VISION_CACHE"
#: Bump when the decoding of derived labels or the entry format changes, so old entries are not
#: reused.
DERIVED_VERSION = 2
_MAGIC = b"MTLVLBL\x01"
_HEADER = struct.Struct("<8sII")  # magic, H, W


def default_cache_dir() -> Path:
    """``$MTLORA_VISION_CACHE``, else ``$XDG_CACHE_HOME/mtlora_vision``, else ``~/.cache/...``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "mtlora_vision"


def file_key(path: Path) -> str:
    """Short key of a file's size and modification time (hex)."""
    stat = path.stat()
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


def files_fingerprint(paths: Iterable[Path]) -> str:
    """SHA-1 over the names, sizes and modification times of ``paths`` (in the given order)."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f"{path.name}\0{file_key(path)}\n".encode())
    return digest.hexdigest()


def dataset_cache_dir(cache_root: str | Path | None, dataset: str, data_root: Path) -> Path:
    """The cache folder of one dataset copy: ``<cache_root>/<dataset>-<hash of its absolute path>``.

    Raises:
        ValueError: If the cache would live inside the dataset folder.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_dir()
    data_root = data_root.resolve()
    tag = hashlib.sha1(str(data_root).encode()).hexdigest()[:12]
    directory = root.resolve() / f"{dataset}-{tag}"
    if directory.is_relative_to(data_root):
        raise ValueError(
            f"cache_dir {str(root)!r} is inside the dataset folder {str(data_root)!r}; the package "
            "never writes into a dataset, choose another cache_dir."
        )
    return directory


def encode_label_map(value: np.ndarray) -> bytes:
    """Cache entry of a ``uint8 (H, W)`` label map: header, then the zlib-compressed bytes."""
    value = np.ascontiguousarray(value, dtype=np.uint8)
    height, width = value.shape
    return _HEADER.pack(_MAGIC, height, width) + zlib.compress(value.tobytes(), 1)


def decode_label_map(payload: bytes, shape: tuple[int, int]) -> np.ndarray | None:
    """Inverse of :func:`encode_label_map`; None for a damaged entry or one of another size."""
    if len(payload) < _HEADER.size:
        return None
    magic, height, width = _HEADER.unpack_from(payload)
    if magic != _MAGIC or (height, width) != tuple(shape):
        return None
    try:
        data = zlib.decompress(payload[_HEADER.size :])
    except zlib.error:
        return None
    if len(data) != height * width:
        return None
    return np.frombuffer(bytearray(data), np.uint8).reshape(height, width)


class DerivedLabelCache:
    """Per-image ``uint8`` label maps derived from one source file each.

    Args:
        directory: Cache folder of the dataset (see :func:`dataset_cache_dir`); None disables the
            cache (every call computes).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._warned = False

    def get(
        self,
        kind: str,
        sample_id: str,
        source: Path,
        compute: Callable[[], np.ndarray],
        shape: tuple[int, int],
    ) -> np.ndarray:
        """Return the cached map for ``(kind, sample_id)``, computing and storing it if needed.

        Args:
            kind: Name of the derived label, e.g. ``"edge"``.
            sample_id: Image id.
            source: The dataset file the label derives from; its size and mtime key the entry.
            compute: Produces the ``uint8 (H, W)`` map on a miss.
            shape: Expected ``(H, W)``; an entry of another size is recomputed.
        """
        if self.directory is None:
            return compute()
        path = self.directory / f"{kind}-v{DERIVED_VERSION}" / f"{sample_id}.{file_key(source)}.bin"
        if path.is_file():
            cached = decode_label_map(path.read_bytes(), shape)
            if cached is not None:
                return cached
            logger.warning("Stale or unreadable cache entry %s; recomputing it.", path)
        value = compute()
        self._store(path, encode_label_map(value))
        self._remove_superseded(path, sample_id)
        return value

    @staticmethod
    def _remove_superseded(path: Path, sample_id: str) -> None:
        """Delete entries of ``sample_id`` keyed by an older version of its source file."""
        for old in path.parent.glob(f"{sample_id}.*.bin"):
            if old != path:
                old.unlink(missing_ok=True)

    def _store(self, path: Path, payload: bytes) -> None:
        try:
            atomic_write_bytes(payload, path, durable=False)
        except OSError as err:
            if not self._warned:
                logger.warning(
                    "Cannot write the label cache under %s (%s); running uncached.",
                    path.parent,
                    err,
                )
                self._warned = True


def cached_flags(
    path: Path, sources: Mapping[str, Path], compute: Callable[[str, Path], bool]
) -> dict[str, bool]:
    """A per-image boolean index stored as JSON, rebuilt when any source file changed.

    Args:
        path: The JSON file in the cache folder.
        sources: Image id -> the file the flag is computed from.
        compute: ``compute(image_id, source) -> flag``, called for every image on a rebuild.

    Returns:
        Image id -> flag.
    """
    fingerprint = files_fingerprint(sources.values())
    if path.is_file():
        try:
            content = json.loads(path.read_text())
            if content.get("fingerprint") == fingerprint and set(content["flags"]) == set(sources):
                return {key: bool(value) for key, value in content["flags"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("Ignoring unreadable index %s; rebuilding it.", path)
    logger.info("Building %s from %d files (cached for later runs).", path.name, len(sources))
    flags = {image_id: bool(compute(image_id, source)) for image_id, source in sources.items()}
    payload = json.dumps({"fingerprint": fingerprint, "flags": flags}, sort_keys=True).encode()
    try:
        atomic_write_bytes(payload, path, durable=False)
    except OSError as err:
        logger.warning("Cannot write index %s (%s); it will be rebuilt next time.", path, err)
    return flags
