# TA-LoRA-inspired visual prompt adapter (`ta_lora_prompt`; Zhang et al., arXiv 2505.00009 -- NOT
# Task-Aware LoRA for SAM). Faithful to the abstract; the details are our design
# (docs/methods.md#ta-lora): per block of stages >= branch_stage, 10 prompt tokens as extra
# keys/values in window attention, a shared prompt P0 plus a rank-4 task part (shared slow factor,
# per-task fast factor), both behind per-head zero-initialised gates. branch_stage=2: task prompts
# in Swin stages 3-4 only (docs/methods.md#branch-stage), stages 1-2 run once for all tasks. Fast
# (per-task) weights get 10x the learning rate (docs/methods.md#ta-lora). Leaf configs set
# model.adapter, model.trainable and the optimizer keys.
from mtlora_vision.adapters.task_conditioned_config import TALoRAPromptConfig

method_name = "ta-lora"
method_adapter = dict(
    type=TALoRAPromptConfig,
    num_tokens=10,
    rank=4,
    compose="add",
    shared_factor="left",
    shared_mode="gated",  # "joint": P0's keys join the image softmax (changes outputs at step 0)
    warmup_mode="learn_gate",
    slow_init="svd",
    fast_slow="lr_ratio",  # or "lookahead" / "two_phase": configs/methods/ta-lora-*_swin-t_pascal.py
    branch_stage=2,
)
method_trainable = dict()  # TrainablePolicy's defaults: what MTLoRA trains besides adapters
method_custom_keys = {"prompt_fast": dict(lr_mult=10.0)}
