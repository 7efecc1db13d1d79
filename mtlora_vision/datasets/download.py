"""Fetching and unpacking the public multi-task archives: resumable download, safe extraction.

Nothing here runs unless asked (``tools/prepare_dataset.py --download`` / ``--archive``).
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

#: Dataset -> (archive file name, public URL) of the ASTMT releases (data.vision.ee.ethz.ch).
ARCHIVES: dict[str, tuple[str, str]] = {
    "pascal_context": (
        "PASCAL_MT.tgz",
        "https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz",
    ),
    "nyud": ("NYUD_MT.tgz", "https://data.vision.ee.ethz.ch/kmaninis/share/MTL/NYUD_MT.tgz"),
}
_CHUNK = 1 << 20


def _total_size(response: object, offset: int, resumed: bool) -> int | None:
    """Size of the remote file from ``Content-Range`` or ``Content-Length`` (None if unknown)."""
    headers = response.headers  # type: ignore[attr-defined]
    content_range = headers.get("Content-Range", "")
    if resumed and "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if resumed else 0)


def download(url: str, dest: str | Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download (``dest`` + ``.part``).

    A partial file is continued with an HTTP ``Range`` request; if the server ignores the range
    (answers 200), the download restarts from zero. The ``.part`` file is renamed to ``dest`` only
    when complete.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Target file.
        progress: Show a progress bar on stderr.
        timeout: Socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        OSError: On network errors (``urllib.error.URLError``) or a truncated transfer; the
            ``.part`` file is kept for the next attempt.
    """
    dest = Path(dest)
    if dest.is_file():
        logger.info("%s already downloaded.", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the partial file is complete
            part.rename(dest)
            return dest
        raise
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        if offset and not resumed:
            logger.info("Server ignored the range request; restarting %s from zero.", dest.name)
            offset = 0
        total = _total_size(response, offset, resumed)
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"Download of {url} stopped at {size} of {total} bytes; run again to resume.")
    part.rename(dest)
    return dest


def _unpack(archive: Path, target: Path, progress: bool) -> None:
    """Extract ``archive`` into ``target`` in one pass, with a progress bar over its bytes."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in tqdm(
                members, unit="files", desc=f"extract {archive.name}", disable=not progress
            ):
                zf.extract(info, target)  # zipfile strips absolute paths and ".." itself
        return
    with (
        open(archive, "rb") as raw,
        tqdm.wrapattr(
            raw,
            "read",
            total=archive.stat().st_size,
            desc=f"extract {archive.name}",
            disable=not progress,
        ) as reader,
        tarfile.open(fileobj=reader, mode="r|*") as tf,  # streamed: the archive is read once
    ):
        for member in tf:
            # The "data" filter refuses absolute paths, links out of the target and devices.
            tf.extract(member, target, filter="data")


def extract_archive(archive: str | Path, root: str | Path, progress: bool = True) -> Path:
    """Unpack a ``.tgz``/``.tar``/``.zip`` dataset archive so that its dataset folder is ``root``.

    The archive is unpacked into a temporary folder beside ``root``; if it holds a single top-level
    folder (``PASCAL_MT/``), that folder is renamed to ``root``, otherwise the whole content is.

    Raises:
        FileNotFoundError: If the archive is missing.
        FileExistsError: If ``root`` exists and is not empty.
        tarfile.TarError, zipfile.BadZipFile: If the archive is corrupt.
    """
    archive, root = Path(archive), Path(root)
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {str(archive)!r} does not exist.")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{str(root)!r} already exists and is not empty; check it with --check or remove it "
            "before extracting again."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.extract-"))
    try:
        _unpack(archive, tmp, progress)
        entries = [p for p in tmp.iterdir() if not p.name.startswith(".")]
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if root.exists():
            root.rmdir()
        source.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
