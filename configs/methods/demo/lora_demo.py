# lora on the CPU demo (small Swin, synthetic PASCAL-Context, five tasks); see
# configs/methods/lora_swin-t_pascal.py for the real experiment.
#   python tools/train.py configs/methods/demo/lora_demo.py
from mmengine.config import read_base

with read_base():
    from ..._base_.methods.lora import *
    from ...mtlora_swin_demo import *

model.adapter = method_adapter
model.adapter.rank = 8  # the demo MTLoRA's shared rank
model.trainable = method_trainable
