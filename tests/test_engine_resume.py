"""--resume picks the most advanced complete checkpoint, by progress recorded inside it."""

from __future__ import annotations

import io
import logging
import os
import shutil

import pytest
import torch
from mmengine.config import Config
from test_fileio import backdate, count_hashes

from mtlora_vision.engine.checkpoint import (
    load_from_local_safe,
    save_checkpoint_file,
    write_checkpoint_bytes,
)
from mtlora_vision.engine.resume import (
    CheckpointProgress,
    latest_checkpoint,
    read_pointer,
    training_finished,
    write_pointer,
)
from mtlora_vision.engine.resume_settings import record_settings, split_changes
from mtlora_vision.engine.runtime import finished_run_message, resolve_resume
from mtlora_vision.safe_load import DamagedCheckpointError


def _save(path, epoch: int, iters_per_epoch: int = 4, mtime: int | None = None) -> str:
    meta = {"epoch": epoch, "iter": epoch * iters_per_epoch}
    save_checkpoint_file({"state_dict": {"w": torch.full((8,), float(epoch))}, "meta": meta}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


def test_progress_inside_the_files_wins_over_file_times(tmp_path):
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    assert latest_checkpoint(str(tmp_path)) is None
    _save(tmp_path / "epoch_6.pth", 6, mtime=100)
    twelve = _save(tmp_path / "epoch_12.pth", 12, mtime=50)  # older by file time
    _save(tmp_path / "epoch_3.pth", 3, mtime=300)  # touched last
    (tmp_path / "exported_full.pth").write_bytes(b"not a training checkpoint")
    assert latest_checkpoint(str(tmp_path)) == CheckpointProgress(twelve, 12, 48)
    write_pointer(str(tmp_path), str(tmp_path / "epoch_6.pth"))  # killed before it moved on
    assert latest_checkpoint(str(tmp_path)).path == twelve


def test_pointer_is_relative_and_a_copied_work_dir_resumes_its_own_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _save(run / "epoch_1.pth", 1)
    write_pointer(str(run), str(run / "epoch_1.pth"))
    assert (run / "last_checkpoint").read_text() == "epoch_1.pth"
    outside = tmp_path / "elsewhere" / "iter_9.pth"  # an out_dir outside the work dir
    outside.parent.mkdir()
    _save(outside, 9)
    write_pointer(str(run), str(outside))
    assert (run / "last_checkpoint").read_text() == str(outside)
    write_pointer(str(run), str(run / "epoch_1.pth"))
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert read_pointer(str(copy)) == str(copy / "epoch_1.pth")
    # A pointer written by an older version: absolute, into the original folder.
    (copy / "last_checkpoint").write_text(str(run / "epoch_1.pth"))
    assert read_pointer(str(copy)) == str(copy / "epoch_1.pth")
    assert latest_checkpoint(str(copy)).path == str(copy / "epoch_1.pth")


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "flipped"])
def test_damaged_newest_checkpoint_is_skipped_naming_it_and_why(tmp_path, caplog, damage):
    six = _save(tmp_path / "epoch_6.pth", 6)
    _save(tmp_path / "epoch_12.pth", 12)
    write_pointer(str(tmp_path), str(tmp_path / "epoch_12.pth"))
    data = (tmp_path / "epoch_12.pth").read_bytes()
    damaged = {
        "truncated": data[: len(data) // 3],
        "empty": b"",
        "random": os.urandom(len(data)),
        "flipped": data[:-100] + bytes([data[-100] ^ 4]) + data[-99:],
    }[damage]
    (tmp_path / "epoch_12.pth").write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(str(tmp_path)) == CheckpointProgress(six, 6, 24)
    assert f"--resume skips {tmp_path / 'epoch_12.pth'}, it is damaged: " in caplog.text
    (tmp_path / "epoch_6.pth").write_bytes(b"")
    with pytest.raises(DamagedCheckpointError, match=r"No complete checkpoint") as err:
        latest_checkpoint(str(tmp_path))
    assert "epoch_12.pth is damaged" in str(err.value)
    assert "epoch_6.pth is damaged" in str(err.value)


def test_only_the_most_advanced_candidates_are_checksummed(tmp_path, monkeypatch):
    # Progress is read through a memory map; checksums (which read every byte) stop at the first
    # complete candidate from the top, so a work dir of many checkpoints is not read in full.
    import mtlora_vision.engine.resume as resume

    for epoch in (2, 4, 6, 8):
        _save(tmp_path / f"epoch_{epoch}.pth", epoch)
    (tmp_path / "epoch_8.pth").write_bytes((tmp_path / "epoch_8.pth").read_bytes()[:-1] + b"x")
    checked = []
    real_check = resume.check_checkpoint_integrity
    monkeypatch.setattr(
        resume, "check_checkpoint_integrity", lambda p: checked.append(p) or real_check(p)
    )
    assert latest_checkpoint(str(tmp_path)).epoch == 6
    assert [os.path.basename(p) for p in checked] == ["epoch_8.pth", "epoch_6.pth"]


def test_checkpoint_without_record_is_still_used(tmp_path):
    # From an older run or another machine: checked by its zip CRC-32s, then loaded.
    path = tmp_path / "epoch_2.pth"
    torch.save({"state_dict": {}, "meta": {"epoch": 2, "iter": 8}}, path)
    assert latest_checkpoint(str(tmp_path)) == CheckpointProgress(str(path), 2, 8)


def _count_verifications(monkeypatch) -> list[str]:
    """Record each file that safe_load's integrity check (size + SHA-256 or container) reads."""
    import mtlora_vision.safe_load as safe_load

    verified = []
    real_check = safe_load.check_file_integrity
    monkeypatch.setattr(
        safe_load, "check_file_integrity", lambda p: verified.append(p) or real_check(p)
    )
    return verified


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("resume", ["auto", "path"])
def test_a_resumed_checkpoint_is_hashed_once_for_its_choice_and_its_load(
    tmp_path, monkeypatch, legacy, resume
):
    buffer = io.BytesIO()
    checkpoint = {"state_dict": {"w": torch.ones(8)}, "meta": {"epoch": 2, "iter": 8}}
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=not legacy)
    path = str(tmp_path / "epoch_2.pth")
    write_checkpoint_bytes(buffer.getvalue(), path)  # with its size + SHA-256 record
    backdate(path)  # saved by an earlier run
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None, train_cfg={}))
    verified = _count_verifications(monkeypatch)
    hashed = count_hashes(monkeypatch)
    assert resolve_resume(cfg, resume if resume == "auto" else path).epoch == 2
    assert verified == [path]  # chosen: verified once, before the Runner is built
    assert load_from_local_safe(cfg.load_from)["meta"]["iter"] == 8
    assert verified == [path, path]  # loaded by the Runner: checked once more...
    assert hashed == [path]  # ...without reading the unchanged file again

    (tmp_path / "epoch_2.pth").write_bytes(buffer.getvalue()[:-10])  # still refused, naming it
    with pytest.raises(DamagedCheckpointError, match=r"epoch_2\.pth' is damaged: it is truncated"):
        resolve_resume(cfg, path)
    with pytest.raises(DamagedCheckpointError, match=r"epoch_2\.pth is damaged: it is truncated"):
        resolve_resume(cfg, "auto")


def test_resolve_resume_and_finished_runs(tmp_path):
    cfg = Config(
        dict(work_dir=str(tmp_path), resume=False, load_from=None, train_cfg=dict(max_epochs=12))
    )
    assert resolve_resume(cfg, None) is None
    assert (cfg.resume, cfg.load_from) == (False, None)
    assert resolve_resume(cfg, "auto") is None  # nothing saved yet: a fresh start
    assert (cfg.resume, cfg.load_from) == (False, None)
    six = _save(tmp_path / "epoch_6.pth", 6)
    point = resolve_resume(cfg, "auto")
    assert (cfg.resume, cfg.load_from, point.epoch) == (True, six, 6)
    assert finished_run_message(cfg, point) is None
    twelve = _save(tmp_path / "epoch_12.pth", 12)
    point = resolve_resume(cfg, twelve)
    assert (cfg.resume, cfg.load_from) == (True, twelve)
    assert "Nothing to train" in finished_run_message(cfg, point)
    assert "epoch 12" in finished_run_message(cfg, point)
    # resume=True in the config without a path counts as --resume (mmengine's own lookup would
    # take whatever last_checkpoint names, relative to the current directory).
    cfg.resume, cfg.load_from = True, None
    assert resolve_resume(cfg, None).path == twelve
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        resolve_resume(cfg, str(tmp_path / "nope.pth"))
    (tmp_path / "epoch_6.pth").write_bytes(b"\0" * 10)
    with pytest.raises(DamagedCheckpointError, match=r"epoch_6\.pth' is damaged"):
        resolve_resume(cfg, str(tmp_path / "epoch_6.pth"))


def test_training_finished_by_epochs_or_iterations():
    point = CheckpointProgress("x.pth", epoch=2, iter=80)
    assert training_finished({"max_epochs": 2}, point)
    assert not training_finished({"max_epochs": 3}, point)
    assert training_finished({"max_iters": 80}, point)
    assert not training_finished({"max_iters": 81}, point)
    assert not training_finished({}, point)


def test_samples_per_step_are_recorded_and_may_not_change_on_resume():
    cfg = {"train_dataloader": {"batch_size": 8}, "model": {"type": "M"}}
    old = record_settings(cfg, processes=2)
    assert old["batch"] == {"train_dataloader.batch_size": 8, "processes": 2}
    assert split_changes(old, record_settings(cfg, processes=2)) == ([], [])
    _, refused = split_changes(old, record_settings(cfg, processes=1))
    assert refused == [("processes", 2, 1)]
    smaller = {**cfg, "train_dataloader": {"batch_size": 4}}
    _, refused = split_changes(old, record_settings(smaller, processes=2))
    assert refused == [("train_dataloader.batch_size", 8, 4)]
    # A record written before the samples per step were recorded is not checked for them.
    older = {k: v for k, v in old.items() if k != "batch"}
    assert split_changes(older, record_settings(smaller, processes=1)) == ([], [])
