# full-ft on the CPU demo (small Swin, synthetic PASCAL-Context, five tasks); see
# configs/methods/full-ft_swin-t_pascal.py for the real experiment.
#   python tools/train.py configs/methods/demo/full-ft_demo.py
from mmengine.config import read_base

with read_base():
    from ..._base_.methods.full_ft import *
    from ...mtlora_swin_demo import *

model.adapter = method_adapter
model.trainable = method_trainable
