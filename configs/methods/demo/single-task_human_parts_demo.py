# Single-task full fine-tuning on human_parts alone, on the CPU demo (configs/_base_/single_task_demo.py);
# see configs/methods/single-task/human_parts_swin-t_pascal.py for the real experiment.
#   python tools/train.py configs/methods/demo/single-task_human_parts_demo.py
from mmengine.config import read_base

with read_base():
    from ..._base_.single_task_demo import *

method_name = "single-task/human_parts"
tasks = ("human_parts",)
model.tasks = train_dataloader.dataset.tasks = val_dataloader.dataset.tasks = tasks
test_dataloader = val_dataloader
