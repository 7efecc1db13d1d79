# Single-task baseline for edge: full fine-tuning of Swin-T 448 on edge alone, official recipe
# (configs/_base_/single_task_pascal.py). The five single-task runs give the Delta-m baselines;
# demo twin: configs/methods/demo/single-task_edge_demo.py.
#   python tools/train.py configs/methods/single-task/edge_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from ..._base_.single_task_pascal import *

method_name = "single-task/edge"
tasks = ("edge",)
model.tasks = train_dataloader.dataset.tasks = val_dataloader.dataset.tasks = tasks
test_dataloader = val_dataloader
