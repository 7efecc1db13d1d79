# MTLoRA r=16 "pertask" (shared rank 16, task rank 4, scale 4): 4,953,146 trainable parameters.
from mmengine.config import read_base

with read_base():
    from .._base_.mtlora_pascal_recipe import *

model.adapter.shared_rank = 16
