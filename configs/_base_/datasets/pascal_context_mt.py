# PASCAL-Context multi-task (PASCAL_MT release): 4,998 train / 5,105 val images, all five tasks.
# Official pipeline (docs/data.md#pipeline): train = flip, scale 0.75-1.25, rotation +-20 deg, resize to
# 448x448; val = resize only. Metrics at 448x448 on resized labels (the paper's protocol); set
# val_dataloader.dataset.keep_original_size=True to evaluate at the original image sizes.
from mmengine.dataset import DefaultSampler

from mtlora_vision.datasets.collate import multitask_collate
from mtlora_vision.datasets.pascal_context import PascalContextMT
from mtlora_vision.datasets.sampler import EpochSeededSampler
from mtlora_vision.evaluation.metrics import MultiTaskMetric

data_root = "data/PASCAL_MT"
tasks = ("semseg", "human_parts", "sal", "normals", "edge")
img_size = (448, 448)

val_dataloader = dict(
    batch_size=32,  # per GPU; the official run used one GPU
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=multitask_collate),
    dataset=dict(
        type=PascalContextMT,
        data_root=data_root,
        split="val",
        tasks=tasks,
        img_size=img_size,
        augment=False,
        keep_original_size=False,
        edge_labels="seg2bmap",  # the ground truth of the SEISM edge evaluation
    ),
)
# Training: the same loader, shuffled, without the last partial batch, with augmentation.
train_dataloader = dict(
    val_dataloader,
    drop_last=True,
    sampler=dict(type=EpochSeededSampler, shuffle=True),  # augmentation seeded per sample
    collate_fn=dict(type=multitask_collate),
    dataset=dict(
        val_dataloader["dataset"],
        split="train",
        augment=True,
        pad_labels_with_ignore=False,  # official: rotated borders become background
    ),
)
test_dataloader = val_dataloader
# Edge ODS/OIS/AP (SEISM protocol, docs/edge_evaluation.md) costs about 0.07-0.35 s per 448x448
# image per process: validation during training reports the edge loss only, testing all of them.
# The metric takes tasks, dataset and classes from the evaluated dataset (its metainfo).
val_evaluator = dict(type=MultiTaskMetric, edge_ods=False)
test_evaluator = dict(type=MultiTaskMetric, edge_ods=True)
