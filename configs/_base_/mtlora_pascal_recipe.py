# The paper's experiment: MTLoRA on Swin-T 448 for PASCAL-Context with the official recipe and
# the paper's four tasks. configs/paper/* and configs/mtlora_swin_pascal.py build on it.
from mmengine.config import read_base

with read_base():
    from .datasets.pascal_context_mt import *
    from .default_runtime import *
    from .models.mtlora_swin_t import *
    from .schedules.mtlora_300e import *

tasks = ("semseg", "human_parts", "sal", "normals")
model.tasks = train_dataloader.dataset.tasks = val_dataloader.dataset.tasks = tasks
test_dataloader = val_dataloader
# ImageNet-1K Swin-T (Microsoft's release or timm's); missing file -> a clear error at start-up.
model.backbone.pretrained = "data/pretrained/swin_tiny_patch4_window7_224.pth"
# Official loss weights (docs/recipe.md#losses); edge (50) and depth (1) are used when those tasks are on.
model.losses = dict(weighting=dict(type="fixed"))
