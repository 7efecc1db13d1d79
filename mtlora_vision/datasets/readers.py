"""Readers for the on-disk formats of the multi-task releases; every failure names the file.

Images and RGB label PNGs are decoded with OpenCV (fast JPEG/PNG); single-channel label PNGs with
Pillow, which returns palette indices for palette PNGs (as PASCAL VOC writes them) where OpenCV
would expand them to colours.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image
from scipy.io.matlab import MatReadError

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_MAT_ERRORS = (OSError, ValueError, TypeError, IndexError, NotImplementedError, MatReadError)


class CorruptFileError(ValueError):
    """A dataset file exists but cannot be decoded, or holds unexpected content."""


class SizeMismatchError(ValueError):
    """A label's spatial size differs from its image's."""


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Dataset file {str(path)!r} does not exist.")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a JPEG or PNG as ``uint8 (H, W, 3)`` RGB.

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be decoded.
    """
    path = Path(path)
    _require_file(path)
    data = path.read_bytes()
    # libjpeg decodes a truncated JPEG into a partly grey image with only a warning on stderr, so
    # check the end-of-image marker explicitly.
    if data[:2] == _JPEG_SOI and not data.rstrip(b"\0").endswith(_JPEG_EOI):
        raise CorruptFileError(f"JPEG {str(path)!r} is truncated (no end-of-image marker).")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CorruptFileError(
            f"Cannot decode image {str(path)!r}; the file is corrupt or not an image."
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel 8-bit PNG (grey or palette) as ``uint8 (H, W)`` raw values.

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be decoded or has more than one channel.
    """
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            array = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(f"Cannot decode label image {str(path)!r}: {err}") from err
    if array.ndim != 2 or mode not in ("L", "P", "I", "I;16"):
        raise CorruptFileError(
            f"Label image {str(path)!r} has mode {mode} and shape {array.shape}; expected a "
            "single-channel PNG."
        )
    if array.dtype != np.uint8:
        if array.max(initial=0) > 255:
            raise CorruptFileError(f"Label image {str(path)!r} has values above 255.")
        array = array.astype(np.uint8)
    return array


def read_gray(path: str | Path) -> np.ndarray:
    """Read any PNG or JPEG as ``uint8 (H, W)`` luminance (Pillow ``convert('L')``).

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be decoded.
    """
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(f"Cannot decode image {str(path)!r}: {err}") from err


def read_mat_variable(path: str | Path, name: str) -> np.ndarray:
    """Read one variable of a MATLAB ``.mat`` file (scipy's default struct layout).

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be parsed.
        KeyError: If the variable is absent.
    """
    path = Path(path)
    _require_file(path)
    try:
        content = scipy.io.loadmat(str(path), variable_names=[name])
    except _MAT_ERRORS as err:
        raise CorruptFileError(f"Cannot read MATLAB file {str(path)!r}: {err}") from err
    if name not in content:
        raise KeyError(f"MATLAB file {str(path)!r} has no variable {name!r}.")
    return content[name]


def read_npy(path: str | Path) -> np.ndarray:
    """Read a ``.npy`` array (no pickles).

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be parsed.
    """
    path = Path(path)
    _require_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CorruptFileError(f"Cannot read NumPy file {str(path)!r}: {err}") from err


def check_same_size(path: str | Path, array: np.ndarray, image_shape: tuple[int, int]) -> None:
    """Raise if a label's spatial size differs from its image's.

    Args:
        path: The label's file, named in the error.
        array: The label, ``(H, W)`` or ``(H, W, C)``.
        image_shape: ``(H, W)`` of the image on disk.

    Raises:
        SizeMismatchError: On a size mismatch.
    """
    if tuple(array.shape[:2]) != tuple(image_shape):
        raise SizeMismatchError(
            f"Label file {str(path)!r} has size {tuple(array.shape[:2])} but its image has size "
            f"{tuple(image_shape)}; the file is mis-sized (list all such files with "
            "tools/prepare_dataset.py --check)."
        )
