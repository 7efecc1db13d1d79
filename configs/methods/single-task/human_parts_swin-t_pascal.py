# Single-task baseline for human_parts: full fine-tuning of Swin-T 448 on human_parts alone, official recipe.
# The five single-task runs give the Delta-m baselines (the paper's "single-task full FT" row);
# demo twin: configs/methods/demo/single-task_human_parts_demo.py.
#   python tools/train.py configs/methods/single-task/human_parts_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from ..._base_.methods.full_ft import *
    from ...mtlora_swin_pascal import *

method_name = "single-task/human_parts"
tasks = ("human_parts",)
model.adapter = method_adapter
model.trainable = method_trainable
model.tasks = train_dataloader.dataset.tasks = val_dataloader.dataset.tasks = tasks
test_dataloader = val_dataloader
