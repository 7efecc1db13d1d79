# TA-LoRA-inspired prompts (configs/_base_/methods/ta_lora.py) with the two-phase fast-slow schedule
# (fast_slow="two_phase"; our design, docs/methods.md#ta-lora). Phase one: P0, the shared
# factor and the gates train on every task while the per-task fast factors are held at their
# initial values. Phase two (from the leaf config's switch epoch): the fast factors train, and the
# slow weights go on at two_phase_slow_lr_mult x their scheduled learning rate (None: held).
# Every prompt weight otherwise at the base learning rate; "prompt_slow" gets its own optimizer
# group so that its rate can be lowered alone. Leaf configs add dict(type=TwoPhaseHook, ...).
from mmengine.config import read_base

with read_base():
    from .ta_lora import *

method_name = "ta-lora-two-phase"
method_adapter.fast_slow = "two_phase"
method_custom_keys = {"prompt_slow": dict(lr_mult=1.0)}
two_phase_slow_lr_mult = 0.1
