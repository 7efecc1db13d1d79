# MTLoRA+ r=32 "pertask": MTLoRA plus a shared adapter on every patch merging, whose reduction
# is frozen: 4,664,378 trainable parameters.
from mmengine.config import read_base

with read_base():
    from .._base_.mtlora_pascal_recipe import *

model.adapter.shared_rank = 32
model.adapter.adapt_downsample = True
