# MTLoRA r=32 "pertask" (shared rank 32, task rank 4, scale 4): 6,083,642 trainable parameters.
from mmengine.config import read_base

with read_base():
    from .._base_.mtlora_pascal_recipe import *

model.adapter.shared_rank = 32
