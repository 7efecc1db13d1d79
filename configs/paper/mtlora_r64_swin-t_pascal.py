# MTLoRA r=64 "pertask" (shared rank 64, task rank 4, scale 4): 8,344,634 trainable parameters.
# The base model already is this setting, so nothing is overridden here.
from mmengine.config import read_base

with read_base():
    from .._base_.mtlora_pascal_recipe import *
