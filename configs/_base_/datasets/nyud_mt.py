# NYUD-v2 multi-task (MTI-Net / ATRC release): 795 train / 654 val images at 480x640; semseg (40
# classes), depth, normals, edge. MTI-Net pipeline: train = horizontal flip, zoom about the centre by
# one of 1.0 / 1.2 / 1.5 (depth divided by the zoom), resize to 480x640; val = resize only (the
# images are 480x640 already). Set val_dataloader.dataset.keep_original_size=True to evaluate at the
# size on disk for other releases. No Delta-m baselines are built in for NYUD-v2 (pass
# val_evaluator.baselines to get Delta-m).
from mmengine.dataset import DefaultSampler

from mtlora_vision.datasets.collate import multitask_collate
from mtlora_vision.datasets.nyud import NYUDMT
from mtlora_vision.datasets.sampler import EpochSeededSampler
from mtlora_vision.evaluation.metrics import MultiTaskMetric

data_root = "data/NYUDv2"
tasks = ("semseg", "depth", "normals", "edge")
img_size = (480, 640)

val_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=multitask_collate),
    dataset=dict(
        type=NYUDMT,
        data_root=data_root,
        split="val",
        tasks=tasks,
        img_size=img_size,
        augment=False,
        keep_original_size=False,
    ),
)
# Training: the same loader, shuffled, without the last partial batch, with augmentation.
train_dataloader = dict(
    val_dataloader,
    drop_last=True,
    sampler=dict(type=EpochSeededSampler, shuffle=True),  # augmentation seeded per sample
    collate_fn=dict(type=multitask_collate),
    dataset=dict(
        val_dataloader["dataset"], split="train", augment=True, scale_choices=(1.0, 1.2, 1.5)
    ),
)
test_dataloader = val_dataloader
# The metric takes tasks, dataset and classes from the evaluated dataset (its metainfo).
val_evaluator = dict(type=MultiTaskMetric, baselines={}, edge_ods=False)
test_evaluator = dict(type=MultiTaskMetric, baselines={}, edge_ods=True)
