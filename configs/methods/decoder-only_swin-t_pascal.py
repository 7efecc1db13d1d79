# Decoder-only (frozen Swin-T 448 backbone), five PASCAL-Context tasks, official recipe.
# The method itself lives in configs/_base_/methods/decoder_only.py; the demo twin is
# configs/methods/demo/decoder-only_demo.py.
#   python tools/train.py configs/methods/decoder-only_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from .._base_.methods.decoder_only import *
    from ..mtlora_swin_pascal import *

model.adapter = method_adapter
model.trainable = method_trainable
