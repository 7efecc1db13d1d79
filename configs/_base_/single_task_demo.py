# Single-task full fine-tuning on the CPU demo (small Swin, synthetic data). Each leaf
# configs/methods/demo/single-task_*_demo.py names its task and the method_name its run is
# compared under.
from mmengine.config import read_base

with read_base():
    from ..mtlora_swin_demo import *
    from .methods.full_ft import *

model.adapter = method_adapter
model.trainable = method_trainable
