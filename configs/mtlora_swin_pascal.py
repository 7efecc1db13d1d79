# MTLoRA r64 on Swin-T 448, all five PASCAL-Context tasks, official recipe:
# AdamW (wd 0.05, official groups), lr 5e-4 * 32 / 512, 20 warm-up epochs then cosine per
# iteration, 300 epochs at batch 32, fp16 AMP on GPU, gradient clipping 5.0, seed 0.
#   python tools/train.py configs/mtlora_swin_pascal.py
from mmengine.config import read_base

with read_base():
    from ._base_.mtlora_pascal_recipe import *

tasks = ("semseg", "human_parts", "sal", "normals", "edge")
model.tasks = train_dataloader.dataset.tasks = val_dataloader.dataset.tasks = tasks
test_dataloader = val_dataloader
