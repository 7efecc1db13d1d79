# MTL-LoRA (Yang et al., arXiv 2410.09437), official variant (docs/methods.md#mtl-lora): shared A,
# per-task full r x r Lambda_t (identity init), n=2 shared up-projections mixed per task by
# softmax(w_t / 0.8) (B_num=2 and tau=0.8 as in the released VL-BART script), dropout 0.05 before A,
# on qkv/proj/fc1/fc2 of every block. Rank 40 matches MTLoRA r64 in trainable parameters on the five
# PASCAL tasks (tools/analyze_model.py: adapters 4,800,480 vs 4,867,584; trainable 8,825,739 vs
# 8,892,843). alpha=160 gives alpha/r = 4, MTLoRA r64's shared scale, as both use the same recipe
# and learning rate. branch_stage=0: every block is task-specific, as published; a later branch
# stage computes the first stages once with plain shared LoRA (cheaper, less task-specific). Trains
# what MTLoRA trains besides the adapters. Leaf configs set model.adapter/model.trainable.
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig

method_name = "mtl-lora"
method_adapter = dict(
    type=MTLLoRAConfig,
    rank=40,
    alpha=160.0,
    num_up=2,
    temperature=0.8,
    dropout=0.05,
    diagonal=None,  # the init's default: full r x r for "official", diagonal for "adapters"
    init="official",  # or "adapters" (AdapterHub MTLLoRAConfig: uniform mix, all-ones Lambda_t)
    target_modules=("qkv", "proj", "fc1", "fc2"),
    branch_stage=0,
)
method_trainable = dict()  # TrainablePolicy's defaults: what MTLoRA trains besides adapters
