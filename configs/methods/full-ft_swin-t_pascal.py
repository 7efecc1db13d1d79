# Multi-task full fine-tuning of Swin-T 448, five PASCAL-Context tasks, official recipe.
# The method itself lives in configs/_base_/methods/full_ft.py; the demo twin is
# configs/methods/demo/full-ft_demo.py.
#   python tools/train.py configs/methods/full-ft_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from .._base_.methods.full_ft import *
    from ..mtlora_swin_pascal import *

model.adapter = method_adapter
model.trainable = method_trainable
