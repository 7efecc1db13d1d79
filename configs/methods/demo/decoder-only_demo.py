# decoder-only on the CPU demo (small Swin, synthetic PASCAL-Context, five tasks); see
# configs/methods/decoder-only_swin-t_pascal.py for the real experiment.
#   python tools/train.py configs/methods/demo/decoder-only_demo.py
from mmengine.config import read_base

with read_base():
    from ..._base_.methods.decoder_only import *
    from ...mtlora_swin_demo import *

model.adapter = method_adapter
model.trainable = method_trainable
