"""Predictions on the user's own images, of any size.

model = init_model("configs/mtlora_swin_demo.py", "work_dirs/mtlora_swin_demo/epoch_12.pth")
results = predict_images(model, collect_images(["photos/", "more/*.jpg"]))
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from mtlora_vision.datasets.transforms import to_input_tensor
from mtlora_vision.models.postprocess import postprocess_outputs

#: File name endings read as images when a folder is given.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def collect_images(sources: Sequence[str | Path]) -> list[Path]:
    """Expand image files, folders (their images, sorted; not recursive) and glob patterns.

    Args:
        sources: Files, folders or patterns such as ``"photos/*.jpg"`` (``**`` recurses).

    Returns:
        The image files, in the order given, each once.

    Raises:
        FileNotFoundError: If a source is neither a file, nor a folder with images, nor a pattern
            that matches files.
        ValueError: If two images share a name (their outputs would overwrite each other).
    """
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise FileNotFoundError(
                    f"Folder {str(path)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
                )
        elif path.is_file():
            images = [path]
        else:
            images = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            images = [p for p in images if p.is_file()]
            if not images:
                raise FileNotFoundError(
                    f"{str(source)!r} is not an image file, a folder or a pattern matching files."
                )
        found += images
    unique = list(dict.fromkeys(found))
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            raise ValueError(
                f"Images {str(stems[path.stem])!r} and {str(path)!r} share the name "
                f"{path.stem!r}; their outputs would overwrite each other. Rename one."
            )
        stems[path.stem] = path
    return unique


def default_input_size(model: nn.Module) -> tuple[int, int]:
    """The model input ``(H, W)`` of the config's test loader, else of the backbone.

    :func:`~mtlora_vision.apis.inference.init_model` keeps the config on the model
    (``model.cfg``); its ``test_dataloader.dataset.img_size`` is the size the model was
    evaluated at.

    Raises:
        ValueError: If neither is known (pass ``size`` explicitly).
    """
    cfg = getattr(model, "cfg", None)
    size = None
    if cfg is not None:
        size = cfg.get("test_dataloader", {}).get("dataset", {}).get("img_size")
    if size is None:
        size = getattr(getattr(model, "backbone", None), "img_size", None)
    if size is None:
        raise ValueError("The model's input size is unknown: pass size=(H, W).")
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def model_class_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Class names per segmentation task of the dataset in the model's config ({} if unknown).

    The names are the ``classes`` of the dataset class that ``model.cfg``'s test loader names
    (e.g. the 21 VOC classes of ``PascalContextMT``), for the legends of ``tools/predict.py``.
    """
    from mtlora_vision.config_types import resolve_type

    cfg = getattr(model, "cfg", None)
    dataset = (cfg.get("test_dataloader") or {}).get("dataset") or {} if cfg is not None else {}
    kind = resolve_type(dataset.get("type"), {}) if dataset.get("type") else None
    classes = getattr(kind, "classes", None) or {}
    return {task: tuple(names) for task, names in classes.items() if names}


def check_input_size(model: nn.Module, size: Sequence[int], flag: str = "size") -> None:
    """Refuse an input size the backbone cannot take, naming ``flag`` as what to change.

    Raises:
        ValueError: If a side is not a multiple of the backbone's ``size_divisor``.
    """
    divisor = getattr(getattr(model, "backbone", None), "size_divisor", 1)
    if any(int(side) % divisor for side in size):
        fixed = " ".join(str(max(divisor, round(int(s) / divisor) * divisor)) for s in size)
        raise ValueError(
            f"{flag} {' '.join(str(s) for s in size)}: every side must be a multiple of "
            f"{divisor} for this backbone; use e.g. {flag} {fixed}."
        )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)`` RGB; a missing or unreadable file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image {str(path)!r} does not exist.")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"Image {str(path)!r} could not be decoded; is it a JPEG or PNG file?")
    return np.ascontiguousarray(bgr[..., ::-1])


def preprocess_image(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Resize (bicubic, aspect ratio not kept, as in training) and ImageNet-normalise.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        size: Model input ``(H, W)``.

    Returns:
        ``float32 (3, size[0], size[1])``.
    """
    resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return to_input_tensor(resized)  # the training transform's normalisation


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: Sequence[str | Path],
    size: tuple[int, int] | None = None,
    batch_size: int = 4,
) -> list[dict]:
    """Predict every task for each image, at the image's own resolution.

    Args:
        model: A ``MultiTaskModel`` in eval mode.
        paths: Image files (see :func:`collect_images` for folders and patterns).
        size: Model input ``(H, W)``; images are resized to it and outputs resized back.
            Default: :func:`default_input_size` (the config's test size).
        batch_size: Images per forward pass.

    Returns:
        Per image ``{"id", "path", "ori_shape", "image" uint8 (H, W, 3) RGB,
        "inputs" (3, h, w), "pred": {task: Tensor at (H, W)}}``.
    """
    size = default_input_size(model) if size is None else tuple(size)
    check_input_size(model, size)
    device = next(model.parameters()).device
    results: list[dict] = []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        images = [read_image(p) for p in chunk]
        inputs = torch.stack([preprocess_image(im, size) for im in images]).to(device)
        outputs = model(inputs, mode="tensor")
        preds = postprocess_outputs(outputs, [im.shape[:2] for im in images])
        for path, image, tensor, pred in zip(chunk, images, inputs, preds, strict=True):
            results.append(
                {
                    "id": path.stem,
                    "path": path,
                    "ori_shape": image.shape[:2],
                    "image": image,
                    "inputs": tensor.cpu(),
                    "pred": pred,
                }
            )
    return results
