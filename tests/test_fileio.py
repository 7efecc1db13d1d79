"""The one atomic writer (umask, errors naming the file, nothing partial) and integrity records."""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlora_vision import fileio
from mtlora_vision.datasets.cache import DerivedLabelCache
from mtlora_vision.fileio import (
    DamagedFileError,
    atomic_write_bytes,
    check_file_integrity,
    record_path,
    write_integrity_record,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(b"ckpt", tmp_path / "epoch_1.pth")
    atomic_write_bytes(b"cache", tmp_path / "cache.bin", durable=False)
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"as open() writes it")
    expected = 0o666 & ~mask
    assert _mode(plain) == expected
    assert _mode(tmp_path / "epoch_1.pth") == expected  # tempfile.mkstemp gave 0o600
    assert _mode(tmp_path / "cache.bin") == expected


class _FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk(monkeypatch) -> None:
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        return _FullDisk(real_fdopen(fd, *args, **kwargs))

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)


def test_full_disk_names_the_file_keeps_the_old_one_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "epoch_3.pth"
    target.write_bytes(b"previous checkpoint")
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match=r"Cannot write .*epoch_3\.pth: No space left") as info:
        atomic_write_bytes(b"new checkpoint", target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous checkpoint"
    assert os.listdir(tmp_path) == ["epoch_3.pth"]


def test_failed_rename_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    def read_only(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.os, "replace", read_only)
    with pytest.raises(OSError, match=r"Cannot write .*last_checkpoint: Read-only") as info:
        atomic_write_bytes(b"epoch_1.pth", tmp_path / "last_checkpoint")
    assert info.value.errno == errno.EROFS
    assert os.listdir(tmp_path) == []


def test_label_cache_uses_the_same_writer_and_warns_naming_the_file(tmp_path, monkeypatch, caplog):
    cache = DerivedLabelCache(tmp_path / "cache")
    source = tmp_path / "label.png"
    source.write_bytes(b"x")
    value = np.arange(6, dtype=np.uint8).reshape(2, 3)
    _full_disk(monkeypatch)
    with caplog.at_level(logging.WARNING):
        got = cache.get("edge", "img1", source, lambda: value, (2, 3))
    np.testing.assert_array_equal(got, value)
    assert "Cannot write" in caplog.text
    assert "img1." in caplog.text
    assert "No space" in caplog.text
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing partial


# ---------------------------------------------------------------- integrity


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    with io.BytesIO() as f:
        torch.save(obj, f, _use_new_zipfile_serialization=not legacy)
        return f.getvalue()


def _recorded(tmp_path: Path) -> tuple[Path, bytes]:
    data = _torch_bytes({"w": torch.arange(100.0), "meta": {"epoch": 1}})
    path = tmp_path / "epoch_1.pth"
    atomic_write_bytes(data, path)
    write_integrity_record(path, data)
    return path, data


def test_record_matches_a_complete_file_and_sha256sum(tmp_path):
    import hashlib
    import json

    path, data = _recorded(tmp_path)
    assert check_file_integrity(path) == "size and SHA-256 match its record"
    record = json.loads(Path(record_path(path)).read_text())
    assert record == {
        "file": "epoch_1.pth",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[: len(d) // 2], r"truncated: \d+ bytes, \d+ recorded"),
        (lambda d: b"", r"truncated: 0 bytes"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), r"SHA-256 differs"),
        (lambda d: os.urandom(len(d)), r"SHA-256 differs"),
    ],
)
def test_recorded_file_damage_is_named(tmp_path, damage, reason):
    path, data = _recorded(tmp_path)
    path.write_bytes(damage(data))
    with pytest.raises(DamagedFileError, match=reason):
        check_file_integrity(path)


def backdate(path, seconds: float = 60.0) -> None:
    """Set the file's modification time into the past: a file saved by an earlier run."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def count_hashes(monkeypatch) -> list:
    """Record every file that ``fileio.sha256_of_file`` reads."""
    hashed = []
    real_hash = fileio.sha256_of_file
    monkeypatch.setattr(fileio, "sha256_of_file", lambda p: hashed.append(p) or real_hash(p))
    return hashed


def test_a_settled_file_that_passed_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    path, data = _recorded(tmp_path)
    backdate(path)
    hashed = count_hashes(monkeypatch)
    assert check_file_integrity(path) == "size and SHA-256 match its record"
    assert check_file_integrity(path).startswith("size and SHA-256 match its record (earlier")
    assert len(hashed) == 1  # the second check reused the first
    # Altered in place, same size: a new modification time, so it is read and refused again.
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DamagedFileError, match="SHA-256 differs"):
        check_file_integrity(path)
    assert len(hashed) == 2


def test_a_just_written_file_is_checked_every_time(tmp_path, monkeypatch):
    # Written in the last 2 s: a same-size rewrite could keep a coarse modification time.
    path, _ = _recorded(tmp_path)
    hashed = count_hashes(monkeypatch)
    for _ in range(2):
        assert check_file_integrity(path) == "size and SHA-256 match its record"
    assert len(hashed) == 2


def _flip_in_tensor_data(data: bytes) -> bytes:
    """Flip one bit inside the stored tensor bytes (not in the zip headers)."""
    marker = np.arange(100, dtype=np.float32).tobytes()[40:48]
    at = data.index(marker)
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[: len(d) // 2], r"truncated zip archive"),
        (lambda d: b"", r"empty"),
        (lambda d: bytes(range(256)) * 4, r"neither a zip archive nor torch's legacy format"),
        (_flip_in_tensor_data, r"fails its CRC-32 check"),
    ],
)
def test_unrecorded_zip_checkpoint_is_checked_by_its_crcs(tmp_path, damage, reason):
    data = _torch_bytes({"w": torch.arange(100.0)})
    path = tmp_path / "from_elsewhere.pth"
    path.write_bytes(data)
    assert "zip CRC-32 of every member checked" in check_file_integrity(path)
    path.write_bytes(damage(data))
    with pytest.raises(DamagedFileError, match=reason):
        check_file_integrity(path)


def test_unrecorded_legacy_format_is_accepted_as_such(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(_torch_bytes({"w": torch.ones(2)}, legacy=True))
    assert "legacy format" in check_file_integrity(path)
