# ta-lora with fast_slow="lookahead" on the CPU demo (small Swin, synthetic PASCAL-Context, five
# tasks); see configs/methods/ta-lora-lookahead_swin-t_pascal.py for the real experiment.
#   python tools/train.py configs/methods/demo/ta-lora-lookahead_demo.py
from mmengine.config import read_base

from mtlora_vision.engine.fast_slow import LookaheadHook
from mtlora_vision.engine.prompt_warmup_hook import PromptWarmupHook

with read_base():
    from ..._base_.methods.ta_lora_lookahead import *
    from ...mtlora_swin_demo import *

model.adapter = method_adapter
model.trainable = method_trainable
optim_wrapper.paramwise_cfg = dict(custom_keys=method_custom_keys)
# Prompt warm-up for the schedule's learning-rate warm-up epochs (docs/methods.md#ta-lora).
custom_hooks.append(dict(type=PromptWarmupHook, warmup_epochs=warmup_epochs))
custom_hooks.append(dict(type=LookaheadHook, **lookahead))
