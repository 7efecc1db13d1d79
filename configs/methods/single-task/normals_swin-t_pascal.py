# Single-task baseline for normals: full fine-tuning of Swin-T 448 on normals alone, official recipe
# (configs/_base_/single_task_pascal.py). The five single-task runs give the Delta-m baselines;
# demo twin: configs/methods/demo/single-task_normals_demo.py.
#   python tools/train.py configs/methods/single-task/normals_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from ..._base_.single_task_pascal import *

method_name = "single-task/normals"
tasks = ("normals",)
model.tasks = train_dataloader.dataset.tasks = val_dataloader.dataset.tasks = tasks
test_dataloader = val_dataloader
