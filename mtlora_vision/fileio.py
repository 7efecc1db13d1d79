"""Atomic file writes and the integrity records that tell a complete checkpoint from a damaged one.

* :func:`atomic_write_bytes` is the one writer for files that must never be seen half-written
  (checkpoints, ``last_checkpoint``, the label cache): the bytes go to a hidden temporary file in
  the target folder, which then replaces the target with ``os.replace``. Readers see the old file
  or the new one, never a part. The temporary file is created with mode ``0o666`` so the user's
  umask applies as for any other output (``tempfile.mkstemp`` would force ``0600``). An OS error
  (full disk, read-only folder) is re-raised naming the target, with the same errno, and the
  temporary file is removed.
* :func:`write_integrity_record` writes ``<file>.sha256.json`` beside a checkpoint (its size and
  SHA-256); :func:`check_file_integrity` compares a file against it. A file without a record
  (older runs, files from elsewhere) is checked by its container instead: torch's zip checkpoints
  store a CRC-32 for every member, which :mod:`zipfile` verifies (``torch.load`` does not).
  A file that passed is not read again in the same process while its identity, size and
  modification time and its record stay the same and it had not just been written (a resumed
  checkpoint is checked when it is chosen and again when the Runner loads it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import os.path as osp
import re
import secrets
import time
import zipfile
from pathlib import Path

from mtlora_vision.errors import InputError

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
RECORD_SUFFIX = ".sha256.json"
#: First bytes of torch's legacy (pre-1.6, non-zip) format: pickle protocol 2, then its magic.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_CHUNK = 1 << 20
#: Files that passed :func:`check_file_integrity` in this process: their state -> how.
_passed: dict[tuple, str] = {}
#: Only files last modified at least this long before their check are remembered: a rewrite within
#: the file system's timestamp granularity could leave the modification time as it was.
_SETTLED_NS = 2_000_000_000


class DamagedFileError(InputError, ValueError):
    """A file is truncated, altered or not in the expected format (it was not loaded)."""


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(folder: str, name: str) -> tuple[int, str]:
    """Create a new hidden temporary file next to ``name``; mode 0o666 minus the umask."""
    while True:
        tmp = osp.join(folder, f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(data: bytes, path: str | Path, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a part.

    Args:
        data: The file's new content.
        path: Target file; its folder is created if needed.
        durable: fsync the file and its folder, so the new file also survives a power loss
            (checkpoints). Caches that can be rebuilt pass False.

    Raises:
        OSError: Naming ``path``, with the original errno (e.g. ``ENOSPC``, ``EACCES``); the
            previous file, if any, is unchanged and no temporary file is left.
    """
    path = osp.abspath(str(path))
    folder, name = osp.split(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _create_temp(folder, name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            _fsync_dir(folder)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(err.errno or errno.EIO, f"Cannot write {path}: {reason}") from err
    finally:
        if tmp is not None and osp.lexists(tmp):
            os.remove(tmp)


def temp_target(name: str) -> str | None:
    """The target name if ``name`` looks like a temporary file of :func:`atomic_write_bytes`."""
    match = re.fullmatch(r"\.(.+)\.[^.]+" + re.escape(TMP_SUFFIX), name)
    return match.group(1) if match else None


def sha256_of_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(path: str | Path) -> str:
    """The integrity record of ``path``: ``<path>.sha256.json``."""
    return f"{path}{RECORD_SUFFIX}"


def write_integrity_record(path: str | Path, data: bytes) -> None:
    """Record the size and SHA-256 of ``data`` (the bytes just written to ``path``), atomically."""
    record = {"file": osp.basename(str(path)), "size": len(data)}
    record["sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes((json.dumps(record, indent=1) + "\n").encode(), record_path(path))


def remove_integrity_record(path: str | Path) -> None:
    """Delete the record of ``path`` if there is one (before the file is replaced or removed)."""
    record = record_path(path)
    if osp.lexists(record):
        os.remove(record)


def _read_record(path: str) -> dict | None:
    """The record of ``path``, or None when it has none or it cannot be read."""
    record = record_path(path)
    if not osp.isfile(record):
        return None
    try:
        with open(record, encoding="utf-8") as f:
            content = json.load(f)
        return {"size": int(content["size"]), "sha256": str(content["sha256"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("Ignoring unreadable integrity record %s (%s).", record, err)
        return None


def _check_container(path: str, size: int) -> str:
    """Check a file without a record by its own structure; return how it was checked."""
    if size == 0:
        raise DamagedFileError("it is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise DamagedFileError(f"its zip container cannot be read ({err})") from None
        if bad is not None:
            raise DamagedFileError(f"member {bad!r} fails its CRC-32 check")
        return "unrecorded, zip CRC-32 of every member checked"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        return "unrecorded, torch legacy format (no checksum to check)"
    if head[:2] == b"PK":
        raise DamagedFileError("it is a truncated zip archive (no central directory)")
    raise DamagedFileError(
        f"it is neither a zip archive nor torch's legacy format (size {size} bytes)"
    )


def check_file_integrity(path: str | Path) -> str:
    """Tell whether a checkpoint file is complete; say how that was decided.

    With an integrity record (written when the file was saved), the size and the SHA-256 must
    match. Without one, the file must be a zip archive whose members all pass their CRC-32 check,
    or a file in torch's legacy format (which carries no checksum; such a file is only loaded).
    A file that passed earlier in this process is not read again while its path, device, inode,
    size, modification time (ns) and record are unchanged, if it was last modified at least 2 s
    before that check (a faster rewrite might keep a coarse modification time).

    Returns:
        How the file was checked, e.g. ``"size and SHA-256 match its record"``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DamagedFileError: Saying what is wrong (truncated, altered, empty, unknown format).
    """
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist; check the path.")
    stat = os.stat(path)
    record = _read_record(path)
    state = (osp.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    state += (None,) if record is None else (record["size"], record["sha256"])
    if state in _passed:
        return f"{_passed[state]} (earlier in this process; the file has not changed since)"
    how = _check_against(path, stat.st_size, record)
    if time.time_ns() - stat.st_mtime_ns >= _SETTLED_NS:
        _passed[state] = how
    return how


def _check_against(path: str, size: int, record: dict | None) -> str:
    """The checks of :func:`check_file_integrity` for a file of ``size`` bytes and its record."""
    if record is None:
        return _check_container(path, size)
    if size != record["size"]:
        kind = "truncated" if size < record["size"] else "longer than written"
        raise DamagedFileError(f"it is {kind}: {size} bytes, {record['size']} recorded")
    if sha256_of_file(path) != record["sha256"]:
        raise DamagedFileError("its SHA-256 differs from the one recorded when it was saved")
    return "size and SHA-256 match its record"
