# mtl-lora on the CPU demo (small Swin, synthetic PASCAL-Context, five tasks); see
# configs/methods/mtl-lora_swin-t_pascal.py for the real experiment.
#   python tools/train.py configs/methods/demo/mtl-lora_demo.py
from mmengine.config import read_base

with read_base():
    from ..._base_.methods.mtl_lora import *
    from ...mtlora_swin_demo import *

model.adapter = method_adapter
model.adapter.rank = 8  # the demo MTLoRA's shared rank
model.adapter.alpha = 32.0  # alpha / rank = 4, MTLoRA's scale
model.trainable = method_trainable
