# BitFit (backbone biases + decoder) on Swin-T 448, five PASCAL-Context tasks, official recipe.
# The method itself lives in configs/_base_/methods/bitfit.py; the demo twin is
# configs/methods/demo/bitfit_demo.py.
#   python tools/train.py configs/methods/bitfit_swin-t_pascal.py
from mmengine.config import read_base

with read_base():
    from .._base_.methods.bitfit import *
    from ..mtlora_swin_pascal import *

model.adapter = method_adapter
model.trainable = method_trainable
