# TA-LoRA-inspired prompts with fast_slow="two_phase" on Swin-T 448, five PASCAL-Context tasks, official
# recipe. The method lives in configs/_base_/methods/ta_lora_two_phase.py; the demo twin is
# configs/methods/demo/ta-lora-two-phase_demo.py.
#   python tools/train.py configs/methods/ta-lora-two-phase_swin-t_pascal.py
from mmengine.config import read_base

from mtlora_vision.engine.fast_slow import TwoPhaseHook
from mtlora_vision.engine.prompt_warmup_hook import PromptWarmupHook

with read_base():
    from .._base_.methods.ta_lora_two_phase import *
    from ..mtlora_swin_pascal import *

model.adapter = method_adapter
model.trainable = method_trainable
optim_wrapper.paramwise_cfg = dict(custom_keys=method_custom_keys)
# Prompt warm-up for the schedule's learning-rate warm-up epochs (docs/methods.md#ta-lora).
custom_hooks.append(dict(type=PromptWarmupHook, warmup_epochs=warmup_epochs))
# Phase two from epoch 101 (0-based 100): the first third of the 300 epochs trains the slow weights.
custom_hooks.append(dict(type=TwoPhaseHook, switch_epoch=100, slow_lr_mult=two_phase_slow_lr_mult))
