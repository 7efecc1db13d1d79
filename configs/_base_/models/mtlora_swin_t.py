# MTLoRA on Swin-T for PASCAL-Context (Agiza et al., CVPR 2024; docs/model.md): the r64
# "pertask" setting. Leaf configs under configs/paper/ override only what differs.
from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.multitask import MultiTaskModel

model = dict(
    type=MultiTaskModel,
    tasks=("semseg", "human_parts", "sal", "normals"),
    dataset="pascal_context",
    backbone=dict(
        type=SwinBackbone,
        arch="tiny",
        img_size=448,
        window_size=7,
        drop_path_rate=0.2,
        pretrained=None,  # e.g. "data/pretrained/swin_tiny_patch4_window7_224.pth" (ImageNet-1K)
    ),
    adapter=dict(
        type=MTLoRAConfig,
        shared_rank=64,  # task-agnostic rank, an int or one per stage
        task_rank=4,  # task-specific rank (proj, fc1, fc2 of the last block of each stage)
        shared_scale=4.0,  # used as given, not divided by the rank
        task_scale=4.0,
        dropout=0.05,
        mode="matrix",  # official semantics (docs/model.md#mtlora-layer)
        target_modules=("qkv", "proj", "fc1", "fc2"),
        adapt_downsample=False,  # True: MTLoRA+ (adapter on patch merging, reduction frozen)
    ),
    # TrainablePolicy's defaults are the paper's: adapters, patch embedding, norms, rel-pos tables,
    # patch-merging reductions (frozen anyway when adapted in MTLoRA+), fusion and heads train;
    # every other pretrained weight and bias is frozen (docs/model.md#trainable-policy).
    trainable=dict(),
    fusion=dict(channels=(18, 36, 72, 144)),
    heads=dict(default=dict(type=HRNetHead)),
)
