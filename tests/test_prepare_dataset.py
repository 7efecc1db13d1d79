"""Dataset preparation: verification report, archive extraction, resumable download."""

from __future__ import annotations

import http.server
import shutil
import tarfile
import threading
from typing import ClassVar

import cv2
import numpy as np
import pytest
from tool_loader import load_tool

from mtlora_vision.datasets.download import download, extract_archive
from mtlora_vision.datasets.prepare import verify_dataset
from mtlora_vision.datasets.synthetic import make_synthetic_dataset

SIZE = (32, 40)


prepare_dataset = load_tool("prepare_dataset")


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep") / "PASCAL_MT"
    return make_synthetic_dataset(root, "pascal_context", 4, 2, SIZE, seed=2)


def test_clean_synthetic_copy_only_reports_the_counts(pascal_root):
    report = verify_dataset("pascal_context", pascal_root, progress=False)
    assert report.counts == {"train": 4, "val": 2}
    assert [(p.kind, p.path.name) for p in report.problems] == [
        ("count", "train.txt"),
        ("count", "val.txt"),
    ]
    text = report.format()
    assert "train: 4 images (the release has 4998)" in text
    assert "5105" in text
    assert report.ok  # readable and complete: the sizes are a warning
    assert "WARNING: split sizes differ from the release: synthetic data, its settings in" in text
    assert text.endswith("  OK")
    (pascal_root / "synthetic.json").rename(pascal_root / "settings.json")  # not known as synthetic
    try:
        assert "differ from the release: a subset?;" in report.format()
    finally:
        (pascal_root / "settings.json").rename(pascal_root / "synthetic.json")


def test_check_exits_0_on_differing_split_sizes_and_1_with_strict(pascal_root, capsys):
    command = ["pascal_context", "--root", str(pascal_root), "--check", "--no-progress"]
    assert prepare_dataset.main(command) == 0
    assert "WARNING: split sizes differ" in capsys.readouterr().out
    assert prepare_dataset.main([*command, "--strict"]) == 1
    out = capsys.readouterr().out
    assert "ERROR (--strict): split sizes differ from the release" in out
    assert out.rstrip().endswith("2 problem(s)")  # not "OK" before the error


def test_missing_unreadable_and_missized_files_are_listed(pascal_root, tmp_path):
    root = shutil.copytree(pascal_root, tmp_path / "PASCAL_MT")
    (root / "normals_distill/2008_000001.png").unlink()
    (root / "JPEGImages/2009_000000.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "human_parts/2008_000002.mat").write_bytes(b"MATLAB garbage")
    cv2.imwrite(str(root / "sal_distill/2008_000003.png"), np.zeros((5, 5), np.uint8))
    report = verify_dataset("pascal_context", root, progress=False)
    found = {(p.kind, str(p.path.relative_to(root))) for p in report.problems if p.kind != "count"}
    assert found == {
        ("missing", "normals_distill/2008_000001.png"),
        ("unreadable", "JPEGImages/2009_000000.jpg"),
        ("unreadable", "human_parts/2008_000002.mat"),
        ("mis-sized", "sal_distill/2008_000003.png"),
    }
    # The checks of the dataset's own readers: label values and channel counts.
    cv2.imwrite(str(root / "semseg/VOC12/2008_000000.png"), np.full(SIZE, 99, np.uint8))
    cv2.imwrite(str(root / "normals_distill/2009_000001.png"), np.zeros(SIZE, np.uint8))
    report = verify_dataset("pascal_context", root, progress=False)
    found = {(p.kind, str(p.path.relative_to(root))) for p in report.problems if p.kind != "count"}
    assert ("unreadable", "semseg/VOC12/2008_000000.png") in found
    assert ("unreadable", "normals_distill/2009_000001.png") in found
    assert len(found) == 6
    short = report.format(limit=1)
    assert "  unreadable: 4\n" in short
    assert "... and 3 more unreadable files" in short
    assert "2008_000002.mat" not in short
    assert "2008_000002.mat" in report.format()
    quick = verify_dataset("pascal_context", root, quick=True, progress=False)
    assert {p.kind for p in quick.problems} == {"count", "missing"}
    assert (
        prepare_dataset.main(["pascal_context", "--root", str(root), "--check", "--no-progress"])
        == 1
    )


def test_nyud_check_and_missing_root(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "NYUDv2", "nyud", 2, 1, SIZE, seed=0)
    (root / "gt_sets/val.txt").unlink()
    np.save(root / "depth/0000.npy", np.zeros((3, 3), np.float32))
    report = verify_dataset("nyud", root, progress=False)
    kinds = {(p.kind, p.path.name) for p in report.problems}
    assert ("missing", "val.txt") in kinds
    assert ("mis-sized", "0000.npy") in kinds
    assert prepare_dataset.main(["nyud", "--root", str(tmp_path / "none"), "--no-progress"]) == 1
    assert "dataset root does not exist" in capsys.readouterr().out


def test_archive_is_extracted_into_root(pascal_root, tmp_path, capsys):
    archive = tmp_path / "PASCAL_MT.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(pascal_root, arcname="PASCAL_MT")
    root = tmp_path / "data" / "pascal"
    code = prepare_dataset.main(
        ["pascal_context", "--root", str(root), "--archive", str(archive), "--no-progress"]
    )
    assert code == 0  # the synthetic counts differ from the release (a warning), nothing else
    assert (root / "JPEGImages/2008_000000.jpg").is_file()
    assert "missing" not in capsys.readouterr().out
    assert [p.name for p in root.parent.iterdir()] == ["pascal"]  # no temporary folder left
    with pytest.raises(FileExistsError, match="already exists"):
        extract_archive(archive, root, progress=False)


def test_unsafe_archive_members_are_refused(tmp_path):
    evil = tmp_path / "evil.txt"
    evil.write_text("x")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(evil, arcname="../escaped.txt")
    with pytest.raises(tarfile.TarError):
        extract_archive(archive, tmp_path / "out" / "root", progress=False)
    assert not (tmp_path / "out" / "escaped.txt").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring ``Range: bytes=N-`` unless ``ignore_range``."""

    payload = b""
    ignore_range = False
    ranges: ClassVar[list[str]] = []

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        self.ranges.append(header)
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}"
            )
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("ignore_range", [False, True])
def test_download_resumes_a_partial_file(tmp_path, ignore_range):
    payload = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    handler = type(
        "Handler",
        (_RangeHandler,),
        {"payload": payload, "ignore_range": ignore_range, "ranges": []},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "PASCAL_MT.tgz"
        (tmp_path / "PASCAL_MT.tgz.part").write_bytes(payload[:123_456])
        url = f"http://127.0.0.1:{server.server_address[1]}/PASCAL_MT.tgz"
        assert download(url, dest, progress=False) == dest
    finally:
        server.shutdown()
        server.server_close()
    assert dest.read_bytes() == payload
    assert handler.ranges == ["bytes=123456-"]
    assert not (tmp_path / "PASCAL_MT.tgz.part").exists()
