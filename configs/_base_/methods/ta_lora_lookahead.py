# TA-LoRA-inspired prompts (configs/_base_/methods/ta_lora.py) with the Lookahead-style fast-slow
# mechanism (fast_slow="lookahead"; our design, docs/methods.md#ta-lora): every prompt
# weight trains at the base learning rate, and every k optimizer steps the slow weights (P0 and the
# shared factor, parameter names containing "prompt_slow") move alpha of the way from their slow
# copies to where the optimizer took them, and restart there. k and alpha are Lookahead's defaults.
# Leaf configs add dict(type=LookaheadHook, **lookahead) to custom_hooks.
from mmengine.config import read_base

with read_base():
    from .ta_lora import *

method_name = "ta-lora-lookahead"
method_adapter.fast_slow = "lookahead"
method_custom_keys = {}  # no learning-rate ratio: Lookahead is what makes the slow weights slow
lookahead = dict(k=5, alpha=0.5, keys=("prompt_slow",))
