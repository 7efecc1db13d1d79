"""Labelled figures of multi-task predictions, drawn with matplotlib (Agg, no display needed).

Two layouts:

* :func:`comparison_figure` (``tools/test.py --show-dir``, the TensorBoard images): one row per
  task, named on the left, with the columns *input*, *ground truth* and *prediction*, and a legend
  on the right;
* :func:`prediction_figure` (``tools/predict.py``): the input once, beside one panel per task,
  legends below the panels.

Every panel keeps the image's aspect ratio (``display_size``). Segmentation legends list the
classes present in the ground truth or the prediction, by name; ignored pixels (255) are hatched
grey (:func:`~mtlora_vision.visualization.colorize.hatch_ignored`) and named in the legend.
Probability legends show the grey scale (0, 0.5, 1); normals legends the colours of the unit axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mtlora_vision.datasets.class_info import HUMAN_PART_CLASSES, NYUD_CLASSES, VOC_CLASSES
from mtlora_vision.tasks import IGNORE_INDEX, TASKS, Kind, task_kind
from mtlora_vision.visualization.colorize import (
    IGNORE_DARK,
    IGNORE_LIGHT,
    colorize,
    denormalize_image,
    label_palette,
    resize_value,
)

#: Row and panel names of the tasks.
TASK_TITLES: Mapping[str, str] = {task: info.title for task, info in TASKS.items()}
COLUMN_TITLES = ("input", "ground truth", "prediction")
IGNORED_LABEL = "ignored (no label)"

_PANEL_INCHES = 2.2  # width of a panel of a landscape or square image
_MAX_PANEL_HEIGHT = 3.0  # portrait images get narrower panels instead
_MIN_PANEL_WIDTH = 2.0
_LEGEND_ROWS = 12  # entries per legend column
_MAX_DISPLAY_SIDE = 512  # pixels: larger images are shown downscaled
_PALETTE = label_palette()
_FONT = 9


def class_names(
    task: str, num_classes: int | None, names: Sequence[str] | None = None
) -> tuple[str, ...] | None:
    """Class names of a segmentation task with ``num_classes`` classes, or None if unknown.

    ``names`` (the dataset's ``metainfo["classes"][task]``) wins when given. Without them the
    count decides: PASCAL-Context semseg has the 21 VOC classes, human parts 7 classes, NYUD-v2
    semseg 40.
    """
    if names:
        return tuple(names)
    if task == "human_parts" and num_classes in (None, len(HUMAN_PART_CLASSES)):
        return HUMAN_PART_CLASSES
    if task == "semseg":
        for candidates in (VOC_CLASSES, NYUD_CLASSES):
            if num_classes == len(candidates):
                return candidates
        if num_classes is None:
            return VOC_CLASSES
    return None


def display_size(shape: Sequence[int], max_side: int = _MAX_DISPLAY_SIDE) -> tuple[int, int]:
    """``(H, W)`` to draw an image of ``shape`` at: its own, scaled down to ``max_side``."""
    height, width = int(shape[0]), int(shape[1])
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def legend_entries(
    task: str,
    shown: Sequence[Tensor],
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
) -> list[tuple[str, tuple[int, int, int] | None]]:
    """Legend of one task: ``(label, RGB)`` per class present, ``(IGNORED_LABEL, None)`` last.

    Args:
        task: Task name.
        shown: The targets / predictions drawn for it.
        num_classes: Classes of a segmentation task (names from :func:`class_names`).
        names: The dataset's class names of the task, if known (they win over the count).
    """
    entries: list[tuple[str, tuple[int, int, int] | None]] = []
    kind = task_kind(task)
    if kind is Kind.CLASSES:
        present = sorted(
            {int(v) for value in shown for v in torch.unique(value.long()).tolist()}
            - {IGNORE_INDEX}
        )
        names = class_names(task, num_classes, names)
        for label in present:
            known = names is not None and label < len(names)
            text = f"{label} {names[label]}" if known else f"class {label}"
            entries.append((text, tuple(int(c) for c in _PALETTE[label])))
    elif kind is Kind.PROBABILITY:
        what = "salient" if task == "sal" else "edge"
        entries += [
            (f"not {what} (0)", (0, 0, 0)),
            ("p = 0.5 (grey: probability)", (128, 128, 128)),
            (f"{what} (1)", (255, 255, 255)),
        ]
    elif task in TASKS and TASKS[task].colormap == "normals":
        # Colour = (n + 1) / 2 per axis (colorize.colorize); the unit axes as examples.
        entries += [
            ("n = (1, 0, 0)", (255, 128, 128)),
            ("n = (0, 1, 0)", (128, 255, 128)),
            ("n = (0, 0, 1)", (128, 128, 255)),
        ]
    if any(bool((value == IGNORE_INDEX).any()) for value in shown):
        entries.append((IGNORED_LABEL, None))
    return entries


def _legend_handles(entries: Sequence[tuple[str, tuple[int, int, int] | None]]) -> list[Patch]:
    handles = []
    for label, rgb in entries:
        if rgb is None:
            handles.append(
                Patch(
                    facecolor=np.array(IGNORE_LIGHT) / 255,
                    edgecolor=np.array(IGNORE_DARK) / 255,
                    hatch="////",
                    label=label,
                )
            )
        else:
            handles.append(
                Patch(facecolor=np.array(rgb) / 255, edgecolor="0.4", linewidth=0.5, label=label)
            )
    return handles


def _draw_legend(ax, entries: Sequence[tuple[str, tuple[int, int, int] | None]], loc: str) -> None:
    ax.axis("off")
    if entries:
        ax.legend(
            handles=_legend_handles(entries),
            loc=loc,
            fontsize=_FONT - 1.5,
            ncol=1 + (len(entries) - 1) // _LEGEND_ROWS,
            frameon=False,
            handlelength=1.4,
            borderaxespad=0.0,
            columnspacing=0.8,
        )


def _show(ax, rgb: np.ndarray | None, title: str | None = None, ylabel: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if rgb is None:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=_FONT - 1)
    else:
        ax.imshow(rgb, interpolation="nearest", aspect="equal")
    if title:
        ax.set_title(title, fontsize=_FONT + 1, fontweight="bold")
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=_FONT + 1, fontweight="bold")


def _panel_inches(size: tuple[int, int]) -> tuple[float, float]:
    """Width and height of one panel for an image of ``size`` (aspect ratio kept)."""
    height, width = size
    panel_w, panel_h = _PANEL_INCHES, _PANEL_INCHES * height / width
    if panel_h > _MAX_PANEL_HEIGHT:
        panel_w, panel_h = _MAX_PANEL_HEIGHT * width / height, _MAX_PANEL_HEIGHT
    # Room for the titles beside narrow (portrait) images; the image keeps its aspect ratio.
    return max(panel_w, _MIN_PANEL_WIDTH), panel_h


def _legend_width(entries_per_row: Sequence[Sequence]) -> float:
    most = max((len(e) for e in entries_per_row), default=0)
    return 0.0 if most == 0 else 1.9 * (1 + (most - 1) // _LEGEND_ROWS)


def _input_rgb(image: Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Input as ``uint8 (H, W, 3)`` RGB at ``size`` (a normalised tensor or an RGB array)."""
    rgb = denormalize_image(image.float()) if isinstance(image, Tensor) else np.asarray(image)
    if rgb.shape[:2] == size:
        return rgb
    resized = F.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=size, mode="bilinear"
    )
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def comparison_figure(
    image: Tensor | np.ndarray,
    preds: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    tasks: Sequence[str] | None = None,
    ori_shape: Sequence[int] | None = None,
    num_classes: Mapping[str, int] | None = None,
    title: str | None = None,
    names: Mapping[str, Sequence[str]] | None = None,
) -> Figure:
    """One row per task: input, ground truth and prediction, with a legend.

    Args:
        image: ``(3, H, W)`` normalised input, or ``uint8 (H, W, 3)`` RGB.
        preds: Task -> prediction (formats of ``mtlora_vision.models.postprocess``).
        targets: Task -> target (255 where ignored); a task without one shows "no ground truth".
        tasks: Rows, in order; default every task of ``preds``.
        ori_shape: ``(H, W)`` of the image on disk: panels are drawn at its aspect ratio
            (the model input may have been resized to a square); default the input's size.
        num_classes: Classes per segmentation task, for the class names of the legend.
        title: Figure title (e.g. the image id).
        names: Class names per segmentation task (the dataset's ``metainfo["classes"]``).

    Returns:
        The figure; :func:`figure_to_rgb` renders it.
    """
    tasks = list(tasks or preds)
    targets = targets or {}
    size = display_size(ori_shape if ori_shape is not None else _shape_of(image))
    rows = []
    for task in tasks:
        target = targets.get(task)
        target = resize_value(task, target, size, labels=True) if target is not None else None
        pred = resize_value(task, preds[task], size, labels=False)
        shown = [pred] if target is None else [target, pred]
        count, task_names = (num_classes or {}).get(task), (names or {}).get(task)
        rows.append((task, target, pred, legend_entries(task, shown, count, task_names)))
    panel_w, panel_h = _panel_inches(size)
    legend_w = _legend_width([r[3] for r in rows])
    left, top = 0.35, 0.45 + (0.3 if title else 0.0)
    fig_w = left + 3 * panel_w + legend_w + 0.1
    fig_h = top + len(rows) * (panel_h + 0.1) + 0.05
    fig = Figure(figsize=(fig_w, fig_h), dpi=_dpi(size, panel_w))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        len(rows),
        4,
        width_ratios=[panel_w, panel_w, panel_w, max(legend_w, 1e-3)],
        left=left / fig_w,
        right=1 - 0.1 / fig_w,
        top=1 - top / fig_h,
        bottom=0.05 / fig_h,
        wspace=0.04,
        hspace=0.1,
    )
    picture = _input_rgb(image, size)
    for index, (task, target, pred, entries) in enumerate(rows):
        cells = [picture, None if target is None else colorize(task, target), colorize(task, pred)]
        for column, rgb in enumerate(cells):
            ax = fig.add_subplot(grid[index, column])
            _show(
                ax,
                rgb,
                title=COLUMN_TITLES[column] if index == 0 else None,
                ylabel=TASK_TITLES.get(task, task) if column == 0 else None,
            )
        _draw_legend(fig.add_subplot(grid[index, 3]), entries, loc="center left")
    if title:
        fig.suptitle(title, fontsize=_FONT + 2, y=1 - 0.12 / fig_h, va="top")
    return fig


def prediction_figure(
    image: Tensor | np.ndarray,
    preds: Mapping[str, Tensor],
    tasks: Sequence[str] | None = None,
    num_classes: Mapping[str, int] | None = None,
    title: str | None = None,
    names: Mapping[str, Sequence[str]] | None = None,
) -> Figure:
    """The input once, beside one panel per task, each with its legend below.

    Args:
        image: ``uint8 (H, W, 3)`` RGB (or a ``(3, H, W)`` normalised tensor), at the size the
            predictions have.
        preds: Task -> prediction at the image's size.
        tasks: Panels, in order; default every task of ``preds``.
        num_classes: Classes per segmentation task, for the class names of the legend.
        title: Figure title (e.g. the file name).
        names: Class names per segmentation task (the dataset's ``metainfo["classes"]``).
    """
    tasks = list(tasks or preds)
    size = display_size(_shape_of(image))
    panels = []
    for task in tasks:
        pred = resize_value(task, preds[task], size, labels=False)
        count, task_names = (num_classes or {}).get(task), (names or {}).get(task)
        panels.append((task, pred, legend_entries(task, [pred], count, task_names)))
    panel_w, panel_h = _panel_inches(size)
    legend_rows = max((min(len(p[2]), _LEGEND_ROWS) for p in panels), default=0)
    legend_h = 0.05 + 0.16 * legend_rows
    top = 0.4 + (0.3 if title else 0.0)
    fig_w = 0.1 + (1 + len(panels)) * (panel_w + 0.1)
    fig_h = top + panel_h + legend_h + 0.1
    fig = Figure(figsize=(fig_w, fig_h), dpi=_dpi(size, panel_w))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        2,
        1 + len(panels),
        height_ratios=[panel_h, max(legend_h, 1e-3)],
        left=0.05 / fig_w,
        right=1 - 0.05 / fig_w,
        top=1 - top / fig_h,
        bottom=0.05 / fig_h,
        wspace=0.06,
        hspace=0.03,
    )
    _show(fig.add_subplot(grid[0, 0]), _input_rgb(image, size), title="input")
    fig.add_subplot(grid[1, 0]).axis("off")
    for column, (task, pred, entries) in enumerate(panels, start=1):
        _show(fig.add_subplot(grid[0, column]), colorize(task, pred), TASK_TITLES.get(task, task))
        _draw_legend(fig.add_subplot(grid[1, column]), entries, loc="upper center")
    if title:
        fig.suptitle(title, fontsize=_FONT + 2, y=1 - 0.1 / fig_h, va="top")
    return fig


def _shape_of(image: Tensor | np.ndarray) -> tuple[int, int]:
    return tuple(image.shape[-2:]) if isinstance(image, Tensor) else tuple(image.shape[:2])


def _dpi(size: tuple[int, int], panel_w: float) -> float:
    """Dots per inch so that a panel shows about one pixel per image pixel, within [100, 200]."""
    return float(np.clip(size[1] / panel_w, 100, 200))


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render a figure to ``uint8 (H, W, 3)`` RGB."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path) -> None:
    """Write a figure as PNG (an unwritable path is an ``OSError`` naming it)."""
    try:
        fig.savefig(path, format="png", dpi=fig.dpi)
    except OSError as err:
        raise OSError(f"Could not write the figure {path}: {err}") from err
