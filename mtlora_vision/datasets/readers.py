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

from mtlora_vision.tasks import IGNORE_INDEX

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


def read_rgb(path: str | Path, strict: bool = False) -> np.ndarray:
    """Read a JPEG or PNG as ``uint8 (H, W, 3)`` RGB.

    Args:
        path: The file.
        strict: Require an 8-bit three-channel file (for vector data such as normals PNGs, where
            converting grey or 16-bit files to RGB would make up values); otherwise any image is
            converted to 8-bit RGB.

    Raises:
        FileNotFoundError: If the file is missing.
        CorruptFileError: If it cannot be decoded, or with ``strict`` is not 8-bit RGB.
    """
    path = Path(path)
    _require_file(path)
    data = path.read_bytes()
    # libjpeg decodes a truncated JPEG into a partly grey image with only a warning on stderr, so
    # check the end-of-image marker explicitly.
    if data[:2] == _JPEG_SOI and not data.rstrip(b"\0").endswith(_JPEG_EOI):
        raise CorruptFileError(f"JPEG {str(path)!r} is truncated (no end-of-image marker).")
    flag = cv2.IMREAD_UNCHANGED if strict else cv2.IMREAD_COLOR
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if bgr is None:
        raise CorruptFileError(
            f"Cannot decode image {str(path)!r}; the file is corrupt or not an image."
        )
    if strict and (bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8):
        channels = 1 if bgr.ndim == 2 else bgr.shape[2]
        raise CorruptFileError(
            f"Image {str(path)!r} has {channels} channel(s) of {bgr.dtype}; expected an 8-bit RGB "
            "file (3 channels). Replace it with the file of the release."
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
        CorruptFileError: If it cannot be parsed or the variable is absent.
    """
    path = Path(path)
    _require_file(path)
    try:
        content = scipy.io.loadmat(str(path), variable_names=[name])
    except _MAT_ERRORS as err:
        raise CorruptFileError(f"Cannot read MATLAB file {str(path)!r}: {err}") from err
    if name not in content:
        raise CorruptFileError(
            f"MATLAB file {str(path)!r} has no variable {name!r}; it is not a file of this "
            "release. Replace it with the file of the release."
        )
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


def check_label_values(path: str | Path, labels: np.ndarray, num_classes: int) -> None:
    """Raise if a label map holds values other than ``0 .. num_classes - 1`` and 255 (ignore).

    Args:
        path: The label's file, named in the error.
        labels: ``uint8 (H, W)``.
        num_classes: Number of classes of the task.

    Raises:
        CorruptFileError: Naming the file and the unexpected values.
    """
    # Two vectorised counts instead of a boolean mask: the common valid map costs almost nothing.
    if np.count_nonzero(labels >= num_classes) == np.count_nonzero(labels == IGNORE_INDEX):
        return
    bad = np.unique(labels[(labels >= num_classes) & (labels != IGNORE_INDEX)])
    raise CorruptFileError(
        f"Label file {str(path)!r} has values {bad.tolist()[:10]} outside 0..{num_classes - 1} "
        f"and {IGNORE_INDEX} (ignore); it is not a label map of this task. Replace it with the "
        "file of the release (list all such files with tools/prepare_dataset.py --check)."
    )


def check_label_map(path: str | Path, array: np.ndarray) -> np.ndarray:
    """Validate a PASCAL-Context ``LabelMap``: 2-D, integer ids (integral floats accepted).

    Args:
        path: The ``.mat`` file, named in the error.
        array: The loaded variable.

    Returns:
        The ids as an integer ``(H, W)`` array (the input itself when already integer).

    Raises:
        CorruptFileError: On another number of dimensions, non-integral or negative values.
    """
    if array.ndim != 2:
        raise CorruptFileError(
            f"LabelMap of {str(path)!r} has shape {array.shape}; expected a 2-D (H, W) map of "
            "PASCAL-Context class ids."
        )
    if np.issubdtype(array.dtype, np.integer):
        labels = array
    elif np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)):
        labels = array.astype(np.int32)
        if not np.array_equal(labels, array):
            labels = None
    else:
        labels = None
    if labels is None or (labels.size and labels.min() < 0):
        raise CorruptFileError(
            f"LabelMap of {str(path)!r} (dtype {array.dtype}) holds values that are not "
            "non-negative integer class ids; replace the file with the one of the release."
        )
    return labels
