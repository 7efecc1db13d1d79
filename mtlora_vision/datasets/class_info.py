"""Class lists of PASCAL VOC, PASCAL-Context, PASCAL-Part and NYUD-v2, and what derives from them.

The JSON files in ``db_info/`` are data published with the datasets (package data). From them
come the 170 PASCAL-Context classes on which the distilled surface normals are valid and the part
names of the person category, grouped into the 6 human-part classes of the multi-task benchmark
(Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

#: PASCAL VOC class names in id order (0 is background).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: VOC id of the person category in PASCAL-Part annotations.
PERSON_CLASS_ID = 15

#: Names of the 6 human-part classes (plus background) of the multi-task benchmark.
HUMAN_PART_CLASSES: tuple[str, ...] = (
    "background",
    "head",
    "torso",
    "upper_arms",
    "lower_arms",
    "upper_legs",
    "lower_legs",
)

#: PASCAL-Part person part name -> human-part class (1 head, 2 torso and neck, 3 upper arms,
#: 4 lower arms and hands, 5 upper legs, 6 lower legs and feet).
HUMAN_PART_GROUPS: Mapping[str, int] = {
    **dict.fromkeys(
        ("head", "hair", "lear", "rear", "leye", "reye", "lebrow", "rebrow", "nose", "mouth"), 1
    ),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}

#: The 40 NYUD-v2 classes (Gupta et al.), in label order (label ``k`` on disk is class ``k - 1``).
NYUD_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

_DB_INFO_FILES = ("context_classes.json", "nyu_classes.json", "pascal_part.json")


@cache
def load_db_info(name: str) -> dict[str, Any]:
    """Read one of the packaged class-list JSON files.

    Args:
        name: ``context_classes.json``, ``nyu_classes.json`` or ``pascal_part.json``.

    Returns:
        The parsed JSON object (do not mutate; it is cached).

    Raises:
        KeyError: If ``name`` is not one of the packaged files.
        FileNotFoundError: If the package data is missing from the installation.
    """
    if name not in _DB_INFO_FILES:
        raise KeyError(f"Unknown db_info file {name!r}; choose from {list(_DB_INFO_FILES)}.")
    resource = resources.files("mtlora_vision.datasets").joinpath("db_info", name)
    if not resource.is_file():
        raise FileNotFoundError(
            f"Package data {name!r} is missing from mtlora_vision/datasets/db_info; reinstall the "
            "package (it must be listed in setup.cfg [options.package_data])."
        )
    return json.loads(resource.read_text(encoding="utf-8"))


def context_class_ids() -> dict[str, int]:
    """PASCAL-Context class name -> ``LabelMap`` id (459 classes, ids 1..459)."""
    return dict(load_db_info("context_classes.json"))


@cache
def normals_valid_context_ids() -> frozenset[int]:
    """Context ids on which the distilled surface normals are valid (170 classes).

    These are the Context classes whose name is also an NYU-Depth class, except ``unknown``, plus
    ``tvmonitor``.
    """
    context = load_db_info("context_classes.json")
    nyu = load_db_info("nyu_classes.json")
    names = {name for name in nyu if name in context and name != "unknown"} | {"tvmonitor"}
    return frozenset(int(context[name]) for name in names)


@cache
def normals_valid_lookup() -> np.ndarray:
    """Boolean table ``(max_id + 1,)``: ``table[label_id]`` is True on normals-valid Context ids."""
    valid = normals_valid_context_ids()
    table = np.zeros(max(load_db_info("context_classes.json").values()) + 1, dtype=bool)
    table[list(valid)] = True
    table.setflags(write=False)
    return table


def person_part_names() -> frozenset[str]:
    """The 24 PASCAL-Part part names of the person category, as in ``pascal_part.json``."""
    return frozenset(load_db_info("pascal_part.json")[str(PERSON_CLASS_ID)])
