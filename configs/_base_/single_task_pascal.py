# Single-task full fine-tuning of Swin-T 448 on the official recipe (the paper's "single-task full FT"
# row, the Delta-m baselines). Each leaf in configs/methods/single-task/ names its task and the
# method_name its run is compared under.
from mmengine.config import read_base

with read_base():
    from ..mtlora_swin_pascal import *
    from .methods.full_ft import *

model.adapter = method_adapter
model.trainable = method_trainable
