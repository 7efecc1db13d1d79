# MTLoRA+ r=16 "pertask": MTLoRA plus a shared adapter on every patch merging, whose reduction
# is frozen: 3,469,370 trainable parameters.
from mmengine.config import read_base

with read_base():
    from .._base_.mtlora_pascal_recipe import *

model.adapter.shared_rank = 16
model.adapter.adapt_downsample = True
