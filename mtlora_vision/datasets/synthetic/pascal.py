"""Synthetic scenes in the exact PASCAL_MT on-disk layout (``docs/data.md#file-formats``).

Each image shows a background (one Context class above a horizon, one below) and a few objects whose
VOC class sets their colour, stripe texture and shape; persons are articulated figures whose six
part groups have their own colours. The Context ``LabelMap``, VOC segmentation, PASCAL-Part ``anno``
struct, saliency (the objects), and normals (from a smooth height field: a tilted ground plane plus
one dome per object) all come from the same rasterisation, so they agree with the pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from mtlora_vision.datasets.class_info import PERSON_CLASS_ID, context_class_ids
from mtlora_vision.datasets.synthetic.scenes import (
    class_texture,
    ellipse_mask,
    encode_normals_png,
    label_boundaries,
    limb_polygon,
    normals_from_height,
    polygon_mask,
    shade,
)
from mtlora_vision.tasks import IGNORE_INDEX

#: Background classes (Context name, RGB) above and below the horizon; normals are valid on
#: ``wall`` and ``floor`` only.
TOP_BACKGROUNDS = (
    ("sky", (120, 170, 230)),
    ("wall", (190, 180, 160)),
    ("building", (150, 115, 105)),
)
BOTTOM_BACKGROUNDS = (
    ("grass", (70, 150, 60)),
    ("floor", (150, 110, 80)),
    ("road", (105, 105, 112)),
)

#: Non-person objects: name -> (VOC id, shape, RGB).
OBJECTS = {
    "car": (7, "rect", (40, 70, 185)),
    "cat": (8, "ellipse", (225, 140, 55)),
    "tvmonitor": (20, "rect", (35, 35, 40)),
    "bottle": (5, "tall", (40, 150, 90)),
    "sofa": (18, "rect", (150, 50, 65)),
    "dog": (12, "ellipse", (120, 80, 40)),
    "bird": (3, "ellipse", (235, 220, 80)),
    "boat": (4, "rect", (235, 235, 235)),
}

#: Person part name -> (human-part group, RGB).
PERSON_PARTS = {
    "lfoot": (6, (15, 15, 15)), "rfoot": (6, (15, 15, 15)),
    "llleg": (6, (25, 30, 80)), "rlleg": (6, (25, 30, 80)),
    "luleg": (5, (60, 75, 170)), "ruleg": (5, (60, 75, 170)),
    "torso": (2, (200, 40, 40)),
    "luarm": (3, (245, 150, 40)), "ruarm": (3, (245, 150, 40)),
    "llarm": (4, (250, 215, 180)), "rlarm": (4, (250, 215, 180)),
    "lhand": (4, (250, 215, 180)), "rhand": (4, (250, 215, 180)),
    "neck": (2, (200, 150, 120)),
    "head": (1, (200, 145, 115)), "hair": (1, (60, 40, 30)),
}  # fmt: skip


_Instance = tuple[str, list[tuple[str, np.ndarray]]]


@dataclass
class SceneObject:
    """One annotated instance: VOC class, visible mask and visible part masks."""

    name: str
    voc_id: int
    mask: np.ndarray
    parts: list[tuple[str, np.ndarray]] = field(default_factory=list)


@dataclass
class PascalScene:
    """Everything written for one image, plus the human-parts map the reader must decode."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    label_map: np.ndarray  # uint16 (H, W) Context ids
    semseg: np.ndarray  # uint8 (H, W) VOC ids, 255 void
    saliency: np.ndarray  # uint8 (H, W) grey levels
    normals: np.ndarray  # float32 (H, W, 3) unit
    objects: list[SceneObject]
    human_parts: np.ndarray  # uint8 (H, W), 255 everywhere without an annotated person


def _dome(mask: np.ndarray) -> np.ndarray:
    """Rounded profile in [0, 1] over a mask, from its distance transform."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    top = max(float(dist.max()), 1.0)
    return np.sqrt(np.clip(1.0 - (1.0 - dist / top) ** 2, 0.0, 1.0)) * mask


def _person_parts(shape: tuple[int, int], rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Rasterised parts of one standing figure, in painting order (later parts on top)."""
    h, w = shape
    fy = min(h - 1.0, rng.uniform(0.75, 1.0) * h)
    height = min(rng.uniform(0.45, 0.8) * h, 0.95 * fy / 1.02)  # keep the head in view
    u = height / 8.0
    cx = rng.uniform(0.2, 0.8) * w
    swing = rng.uniform(-0.4, 0.4, size=2) * u
    parts: list[tuple[str, np.ndarray]] = []
    for side, s in (("l", 1.0), ("r", -1.0)):
        hip, knee, ankle = (
            (cx + s * 0.4 * u, fy - 4 * u),
            (cx + s * 0.45 * u, fy - 2 * u),
            (cx + s * 0.45 * u, fy - 0.25 * u),
        )
        parts.append(
            (
                f"{side}foot",
                ellipse_mask(shape, (cx + s * 0.6 * u, fy - 0.12 * u), (0.35 * u, 0.15 * u))[0],
            )
        )
        parts.append((f"{side}lleg", polygon_mask(shape, limb_polygon(knee, ankle, 0.42 * u))))
        parts.append((f"{side}uleg", polygon_mask(shape, limb_polygon(hip, knee, 0.55 * u))))
    torso = [
        (cx - 0.8 * u, fy - 6.8 * u),
        (cx + 0.8 * u, fy - 6.8 * u),
        (cx + 0.7 * u, fy - 3.9 * u),
        (cx - 0.7 * u, fy - 3.9 * u),
    ]
    parts.append(("torso", polygon_mask(shape, torso)))
    for (side, s), dx in zip((("l", 1.0), ("r", -1.0)), swing, strict=True):
        shoulder, elbow = (cx + s * 0.9 * u, fy - 6.5 * u), (cx + s * 1.2 * u + dx, fy - 5.2 * u)
        wrist = (cx + s * 1.3 * u + 2 * dx, fy - 4.0 * u)
        parts.append((f"{side}uarm", polygon_mask(shape, limb_polygon(shoulder, elbow, 0.38 * u))))
        parts.append((f"{side}larm", polygon_mask(shape, limb_polygon(elbow, wrist, 0.32 * u))))
        parts.append((f"{side}hand", ellipse_mask(shape, wrist, (0.22 * u, 0.22 * u))[0]))
    parts.append(
        (
            "neck",
            polygon_mask(shape, limb_polygon((cx, fy - 7.1 * u), (cx, fy - 6.7 * u), 0.35 * u)),
        )
    )
    head, _ = ellipse_mask(shape, (cx, fy - 7.55 * u), (0.45 * u, 0.55 * u))
    parts.append(("head", head))
    yy = np.arange(h)[:, None]
    parts.append(("hair", head & (yy < fy - 7.75 * u)))
    return parts


def _object_mask(shape: tuple[int, int], kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    size = rng.uniform(0.15, 0.35) * min(h, w)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.35, 0.85) * h
    if kind == "rect":
        aspect = rng.uniform(0.6, 1.6)
        half_w, half_h = size * aspect, size / aspect * 0.8
        return polygon_mask(
            shape,
            [
                (cx - half_w, cy - half_h),
                (cx + half_w, cy - half_h),
                (cx + half_w, cy + half_h),
                (cx - half_w, cy + half_h),
            ],
        )
    if kind == "tall":
        return ellipse_mask(shape, (cx, cy), (0.35 * size, size))[0]
    return ellipse_mask(shape, (cx, cy), (size, 0.7 * size), rng.uniform(-30, 30))[0]


def _instances(shape: tuple[int, int], rng: np.random.Generator, person: str) -> list[_Instance]:
    """Instances in painting order: ``(class name, [(part or "", mask), ...])``."""
    names = list(OBJECTS)
    chosen = [str(n) for n in rng.choice(names, size=int(rng.integers(1, 3)), replace=False)]
    instances = [(name, [("", _object_mask(shape, OBJECTS[name][1], rng))]) for name in chosen]
    if person != "none":
        instances.insert(
            int(rng.integers(0, len(instances) + 1)), ("person", _person_parts(shape, rng))
        )
    return instances


def render_pascal_scene(
    shape: tuple[int, int], rng: np.random.Generator, person: str
) -> PascalScene:
    """Render one synthetic PASCAL_MT image and all its labels.

    Args:
        shape: ``(H, W)``.
        rng: Source of every random choice (deterministic per seed).
        person: ``"none"`` (no person), ``"annotated"`` (a person with parts) or
            ``"unannotated"`` (a person object whose ``parts`` array is empty).
    """
    h, w = shape
    context = context_class_ids()
    horizon = int(rng.uniform(0.35, 0.65) * h)
    top_index, bottom_index = int(rng.integers(3)), int(rng.integers(3))
    top, bottom = TOP_BACKGROUNDS[top_index], BOTTOM_BACKGROUNDS[bottom_index]
    yy = np.arange(h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    below = yy >= horizon
    label_map = np.where(below, context[bottom[0]], context[top[0]]).astype(np.uint16)
    semseg = np.zeros(shape, np.uint8)
    height = np.where(below, 0.5 * (yy - horizon), 0.0).astype(np.float32)
    albedo = np.where(
        below[..., None],
        np.float32(bottom[1]) * class_texture(shape, 50 + bottom_index, rng)[..., None],
        np.float32(top[1]) * class_texture(shape, 40 + top_index, rng)[..., None],
    )
    owner = np.full(shape, -1, np.int32)
    part_owner = np.full(shape, -1, np.int32)
    instances = _instances(shape, rng, person)
    all_parts: list[tuple[int, str]] = []
    for index, (name, parts) in enumerate(instances):
        voc_id = PERSON_CLASS_ID if name == "person" else OBJECTS[name][0]
        tint = rng.uniform(-15, 15, size=3)
        for part_name, mask in parts:
            key = PERSON_PARTS[part_name][0] if part_name else voc_id
            colour = PERSON_PARTS[part_name][1] if part_name else OBJECTS[name][2]
            albedo[mask] = (
                (np.float32(colour) + tint) * class_texture(shape, 20 + key, rng)[..., None]
            )[mask]
            owner[mask] = index
            part_owner[mask] = len(all_parts)
            all_parts.append((index, part_name))
        union = np.any([m for _, m in parts], axis=0)
        height = np.where(union, 30.0 + 0.3 * min(h, w) * _dome(union), height)
        label_map[union] = context[name]
        semseg[union] = voc_id
    normals = normals_from_height(height)
    objects, human_parts = _annotations(shape, instances, owner, part_owner, all_parts, person)
    if min(h, w) >= 96:
        semseg[label_boundaries(owner) & (owner >= 0)] = IGNORE_INDEX
    saliency = np.where(owner >= 0, 235, 15).astype(np.uint8)
    image = shade(albedo, normals, rng)
    return PascalScene(image, label_map, semseg, saliency, normals, objects, human_parts)


def _annotations(
    shape: tuple[int, int],
    instances: list[_Instance],
    owner: np.ndarray,
    part_owner: np.ndarray,
    all_parts: list[tuple[int, str]],
    person: str,
) -> tuple[list[SceneObject], np.ndarray]:
    """PASCAL-Part objects with visible masks, and the expected human-parts map."""
    objects: list[SceneObject] = []
    human_parts = np.full(shape, IGNORE_INDEX, np.uint8)
    for index, (name, _) in enumerate(instances):
        visible = owner == index
        if not visible.any():
            continue
        voc_id = PERSON_CLASS_ID if name == "person" else OBJECTS[name][0]
        obj = SceneObject(name, voc_id, visible)
        if name == "person" and person == "annotated":
            for k, (owner_index, part_name) in enumerate(all_parts):
                part_mask = part_owner == k
                if owner_index == index and part_mask.any():
                    obj.parts.append((part_name, part_mask))
        elif name in ("cat", "dog"):
            rows = np.nonzero(visible.any(axis=1))[0]
            cut = rows[0] + (rows[-1] - rows[0]) // 3
            head = visible & (np.arange(shape[0])[:, None] <= cut)
            obj.parts = [("head", head), ("torso", visible & ~head)]
        if name == "person" and obj.parts:
            if (human_parts == IGNORE_INDEX).all():
                human_parts[:] = 0
            for part_name, part_mask in obj.parts:
                human_parts[part_mask] = PERSON_PARTS[part_name][0]
        objects.append(obj)
    return objects, human_parts


#: Text of the 116-byte MAT-file header; scipy writes the current time there, which would make
#: two runs with the same seed differ in their bytes.
_MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by mtlora_vision (synthetic data)"
_MAT_HEADER_TEXT_SIZE = 116


def save_mat(path: Path, variables: dict[str, np.ndarray]) -> None:
    """``scipy.io.savemat`` (compressed, MATLAB 5 format) with a fixed header text."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=True)
    payload = bytearray(buffer.getvalue())
    payload[:_MAT_HEADER_TEXT_SIZE] = _MAT_HEADER_TEXT.ljust(_MAT_HEADER_TEXT_SIZE)
    path.write_bytes(bytes(payload))


def write_anno_mat(path: Path, image_id: str, objects: list[SceneObject]) -> None:
    """Write a PASCAL-Part ``anno`` struct readable as ``loadmat(p)['anno'][0][0][1][0]``."""
    part_dtype = [("part_name", object), ("mask", object)]
    obj_dtype = [("class", object), ("class_ind", object), ("mask", object), ("parts", object)]
    records = np.zeros((1, len(objects)), dtype=obj_dtype)
    for i, obj in enumerate(objects):
        if obj.parts:
            parts = np.zeros((1, len(obj.parts)), dtype=part_dtype)
            for j, (name, mask) in enumerate(obj.parts):
                parts[0, j] = (np.array([name]), mask.astype(np.uint8))
        else:
            parts = np.zeros((0, 0))
        records[0, i] = (
            np.array([obj.name]),
            np.array([[obj.voc_id]], np.uint8),
            obj.mask.astype(np.uint8),
            parts,
        )
    anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = (np.array([image_id]), records)
    save_mat(path, {"anno": anno})


def write_pascal_sample(root: Path, image_id: str, scene: PascalScene, voc_semseg: bool) -> None:
    """Write one image and its labels into the PASCAL_MT layout under ``root``."""
    semseg_dir = root / "semseg" / ("VOC12" if voc_semseg else "pascal-context")
    cv2.imwrite(
        str(root / "JPEGImages" / f"{image_id}.jpg"),
        scene.image[..., ::-1],
        [cv2.IMWRITE_JPEG_QUALITY, 95],
    )
    cv2.imwrite(str(semseg_dir / f"{image_id}.png"), scene.semseg)
    cv2.imwrite(str(root / "sal_distill" / f"{image_id}.png"), scene.saliency)
    cv2.imwrite(
        str(root / "normals_distill" / f"{image_id}.png"),
        encode_normals_png(scene.normals)[..., ::-1],
    )
    save_mat(
        root / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": scene.label_map}
    )
    write_anno_mat(root / "human_parts" / f"{image_id}.mat", image_id, scene.objects)


PASCAL_DIRS = (
    "JPEGImages",
    "semseg/VOC12",
    "semseg/pascal-context",
    "sal_distill",
    "normals_distill",
    "pascal-context/trainval",
    "human_parts",
    "ImageSets/Context",
)


def person_kind(index: int) -> str:
    """Which person an image gets: every third image has none; some persons lack part labels."""
    if index % 3 == 1:
        return "none"
    return "unannotated" if index % 9 == 5 else "annotated"


def write_pascal_dataset(
    root: Path, num_train: int, num_val: int, size: tuple[int, int], seed: int
) -> None:
    """Write a synthetic PASCAL_MT dataset into ``root`` (train ids ``2008_*``, val ``2009_*``)."""
    for sub in PASCAL_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids = [f"{2008 + split_index}_{i:06d}" for i in range(count)]
        for i, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, split_index, i])
            scene = render_pascal_scene(size, rng, person_kind(i))
            write_pascal_sample(root, image_id, scene, voc_semseg=i % 5 != 3)
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
