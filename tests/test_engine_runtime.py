"""--resume resolution: the newest complete checkpoint, also when last_checkpoint lags behind."""

from __future__ import annotations

import os

import pytest
from mmengine.config import Config

from mtlora_vision.engine.runtime import latest_checkpoint, resolve_resume


def _write(path, mtime: int) -> str:
    path.write_bytes(b"checkpoint")
    os.utime(path, (mtime, mtime))
    return str(path)


def test_latest_checkpoint_covers_a_kill_before_the_pointer_was_written(tmp_path):
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    assert latest_checkpoint(str(tmp_path)) is None
    first = _write(tmp_path / "epoch_1.pth", 100)
    assert latest_checkpoint(str(tmp_path)) == first  # killed before last_checkpoint existed
    (tmp_path / "last_checkpoint").write_text(first)
    second = _write(tmp_path / "epoch_2.pth", 200)  # killed before the pointer moved on
    _write(tmp_path / "exported_full.pth", 300)  # not a training checkpoint
    _write(tmp_path / ".epoch_3.pth.x1.tmp", 400)  # an interrupted write
    assert latest_checkpoint(str(tmp_path)) == second
    elsewhere = _write(tmp_path.parent / "iter_9.pth", 500)  # out_dir outside the work dir
    (tmp_path / "last_checkpoint").write_text(elsewhere)
    assert latest_checkpoint(str(tmp_path)) == elsewhere
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "moved_away.pth"))  # stale
    assert latest_checkpoint(str(tmp_path)) == second


def test_resolve_resume(tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None))
    resolve_resume(cfg, None)
    assert (cfg.resume, cfg.load_from) == (False, None)
    resolve_resume(cfg, "auto")  # nothing saved yet: a fresh start, not an error
    assert (cfg.resume, cfg.load_from) == (False, None)
    path = _write(tmp_path / "iter_4.pth", 100)
    resolve_resume(cfg, "auto")
    assert (cfg.resume, cfg.load_from) == (True, path)
    resolve_resume(cfg, path)
    assert (cfg.resume, cfg.load_from) == (True, path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        resolve_resume(cfg, str(tmp_path / "nope.pth"))
