"""Labelled figures: headers, task names, legends of the classes present, ignored pixels, aspect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlora_vision.visualization.colorize import IGNORE_DARK, IGNORE_LIGHT
from mtlora_vision.visualization.figure import (
    IGNORED_LABEL,
    comparison_figure,
    figure_to_rgb,
    legend_entries,
    prediction_figure,
)


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def _legend_texts(fig):
    return [
        [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()
    ]


def _sample(height=96, width=128):
    """A square model input (128 x 128) of an image that is 96 x 128 on disk."""
    semseg = torch.zeros(128, 128, dtype=torch.long)
    semseg[10:40, 10:40] = 15  # person
    semseg[0, :] = 255  # an ignored border
    parts = torch.full((128, 128), 255, dtype=torch.long)  # no person annotated: all ignored
    targets = {"semseg": semseg, "human_parts": parts, "sal": torch.zeros(128, 128).long()}
    preds = {
        "semseg": torch.where(semseg == 255, 0, semseg),
        "human_parts": torch.zeros(128, 128, dtype=torch.long),
        "sal": torch.rand(128, 128),
    }
    preds["semseg"][50:60, 50:60] = 7  # car, only predicted
    return torch.zeros(3, 128, 128), preds, targets, (height, width)


def test_comparison_figure_has_headers_task_names_and_class_legends():
    image, preds, targets, ori_shape = _sample()
    fig = comparison_figure(image, preds, targets, ori_shape=ori_shape, title="2008_000001")
    axes = _image_axes(fig)
    assert len(axes) == 3 * 3  # 3 tasks x (input, ground truth, prediction)
    assert [ax.get_title() for ax in axes[:3]] == ["input", "ground truth", "prediction"]
    assert [ax.get_ylabel() for ax in axes[::3]] == [
        "semantic segmentation",
        "human parts",
        "saliency",
    ]
    semseg, parts, sal = _legend_texts(fig)
    # Classes present in the ground truth or the prediction, by PASCAL name, and the ignored mark.
    assert semseg == ["0 background", "7 car", "15 person", IGNORED_LABEL]
    assert parts == ["0 background", IGNORED_LABEL]
    assert sal == ["not salient (0)", "p = 0.5 (grey: probability)", "salient (1)"]
    assert fig._suptitle.get_text() == "2008_000001"


def test_panels_keep_the_original_aspect_ratio():
    image, preds, targets, ori_shape = _sample(96, 128)
    fig = comparison_figure(image, preds, targets, ori_shape=ori_shape)
    figure_to_rgb(fig)  # lay out
    for ax in _image_axes(fig):
        box = ax.get_window_extent()
        assert box.height / box.width == pytest.approx(96 / 128, abs=0.02)
        assert ax.get_images()[0].get_array().shape[:2] == (96, 128)
    tall = comparison_figure(image, preds, targets, ori_shape=(200, 100))
    figure_to_rgb(tall)
    box = _image_axes(tall)[0].get_window_extent()
    assert box.height / box.width == pytest.approx(2.0, abs=0.03)


def test_ignored_pixels_are_hatched_grey_in_the_picture():
    image, preds, targets, ori_shape = _sample()
    fig = comparison_figure(image, preds, targets, ori_shape=ori_shape)
    parts_target = _image_axes(fig)[4].get_images()[0].get_array()  # row 2, ground truth
    colours = {tuple(c) for c in np.asarray(parts_target).reshape(-1, 3).tolist()}
    assert colours == {IGNORE_LIGHT, IGNORE_DARK}  # not white, not a class colour


def test_prediction_figure_shows_the_input_once_beside_one_panel_per_task():
    rgb = np.full((60, 200, 3), 90, np.uint8)
    preds = {
        "semseg": torch.zeros(60, 200, dtype=torch.long),
        "sal": torch.rand(60, 200),
        "normals": torch.nn.functional.normalize(torch.rand(3, 60, 200), dim=0),
    }
    fig = prediction_figure(rgb, preds, num_classes={"semseg": 21}, title="street.jpg")
    picture = figure_to_rgb(fig)
    axes = _image_axes(fig)
    assert [ax.get_title() for ax in axes] == ["input", "semantic segmentation", "saliency",
                                               "surface normals"]  # fmt: skip
    semseg, sal, normals = _legend_texts(fig)
    assert (len(semseg), len(sal)) == (1, 3)  # background; the probability scale
    assert normals == ["n = (1, 0, 0)", "n = (0, 1, 0)", "n = (0, 0, 1)"]  # the colour code
    heights = {round(ax.get_window_extent().height) for ax in axes}
    assert len(heights) == 1  # one row
    box = axes[0].get_window_extent()
    assert box.height / box.width == pytest.approx(60 / 200, abs=0.02)
    assert picture.shape[1] > 3 * picture.shape[0]  # a strip, not a stack of rows


def test_nyud_classes_and_unknown_counts_are_named():
    labels = torch.tensor([[0, 1], [39, 255]])
    names = [label for label, _ in legend_entries("semseg", [labels], num_classes=40)]
    assert names == ["0 wall", "1 floor", "39 otherprop", IGNORED_LABEL]
    generic = [label for label, _ in legend_entries("semseg", [labels], num_classes=50)]
    assert generic[:2] == ["class 0", "class 1"]


def test_the_datasets_class_names_win_over_the_count():
    # A custom dataset with 21 classes that are not VOC's: its own names, not VOC's.
    labels = torch.tensor([[0, 2], [1, 255]])
    own = ("road", "car", "tree", *(f"c{i}" for i in range(3, 21)))
    names = [label for label, _ in legend_entries("semseg", [labels], 21, names=own)]
    assert names == ["0 road", "1 car", "2 tree", IGNORED_LABEL]
    fig = prediction_figure(
        np.zeros((8, 8, 3), np.uint8), {"semseg": labels}, num_classes={"semseg": 21},
        names={"semseg": own},
    )  # fmt: skip
    assert _legend_texts(fig) == [["0 road", "1 car", "2 tree", IGNORED_LABEL]]


def test_class_names_come_from_the_dataset_of_the_run_or_of_the_config():
    from types import SimpleNamespace

    from mtlora_vision.apis.predict import model_class_names
    from mtlora_vision.datasets.class_info import HUMAN_PART_CLASSES, NYUD_CLASSES, VOC_CLASSES
    from mtlora_vision.engine.runtime import load_config
    from mtlora_vision.engine.visualization_hook import dataset_class_names

    dataset = SimpleNamespace(metainfo={"classes": {"semseg": ["a", "b"], "human_parts": []}})
    assert dataset_class_names(dataset) == {"semseg": ("a", "b")}
    assert dataset_class_names(object()) == {}
    pascal = SimpleNamespace(cfg=load_config("configs/mtlora_swin_demo.py"))
    assert model_class_names(pascal) == {"semseg": VOC_CLASSES, "human_parts": HUMAN_PART_CLASSES}
    nyud = SimpleNamespace(cfg=load_config("configs/_base_/datasets/nyud_mt.py"))
    assert model_class_names(nyud) == {"semseg": NYUD_CLASSES}
    assert model_class_names(SimpleNamespace()) == {}
