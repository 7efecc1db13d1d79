# Single shared LoRA, the official `lora_only` baseline: the MTLoRA shared path alone (rank 64,
# scale 4.0 used as given, dropout 0.05 on qkv/proj/fc1/fc2 of every block), no task adapters.
# Trains what MTLoRA trains besides the adapters: patch embedding, norms, rel-pos tables,
# patch-merging reductions, fusion and heads. Leaf configs set model.adapter/model.trainable.
from mtlora_vision.adapters.config import LoRAConfig

method_name = "lora"
method_adapter = dict(
    type=LoRAConfig,
    rank=64,
    scale=4.0,
    dropout=0.05,
    target_modules=("qkv", "proj", "fc1", "fc2"),
    adapt_downsample=False,
)
method_trainable = dict()  # TrainablePolicy's defaults: what MTLoRA trains besides adapters
