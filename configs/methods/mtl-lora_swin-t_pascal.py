# MTL-LoRA (rank 40, 2 up-projections: MTLoRA r64's trainable-parameter budget) on Swin-T 448,
# five PASCAL-Context tasks, official recipe. The method lives in configs/_base_/methods/mtl_lora.py;
# the demo twin is configs/methods/demo/mtl-lora_demo.py.
#   python tools/train.py configs/methods/mtl-lora_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from .._base_.methods.mtl_lora import *
    from ..mtlora_swin_pascal import *

model.adapter = method_adapter
model.trainable = method_trainable
