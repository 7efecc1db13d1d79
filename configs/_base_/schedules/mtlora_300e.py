# The official MTLoRA recipe (docs/recipe.md#optimizer): AdamW, 20 warm-up epochs then cosine per iteration,
# 300 epochs at batch 32 on one GPU, fp16 AMP with gradient clipping at 5.0.
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from mmengine.runner import TestLoop, ValLoop
from torch.optim import AdamW

from mtlora_vision.engine.loops import CheckedEpochBasedTrainLoop
from mtlora_vision.engine.optim import OfficialOptimWrapperConstructor

batch_size = 32  # total over all GPUs; the learning rate below assumes it
base_lr = 5e-4 * batch_size / 512  # = 3.125e-05: the official linear scaling by total batch / 512
warmup_lr = 5e-7 * batch_size / 512  # = 3.125e-08
min_lr = 5e-6 * batch_size / 512  # = 3.125e-07
max_epochs = 300
warmup_epochs = 20

optim_wrapper = dict(
    type=AmpOptimWrapper,  # fp16 on GPU; the tools switch it with --precision (default auto)
    dtype="float16",
    optimizer=dict(type=AdamW, lr=base_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    # Official groups: decay on >=2-D weights not named *.bias (LoRA, rel-pos tables and convs
    # included), none on 1-D parameters and biases; frozen parameters are left out.
    constructor=OfficialOptimWrapperConstructor,
)
param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=warmup_lr / base_lr,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type=CosineAnnealingLR,
        T_max=max_epochs - warmup_epochs,
        eta_min=min_lr,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
# A train split smaller than one batch is an error when the loop is built.
train_cfg = dict(type=CheckedEpochBasedTrainLoop, max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
# Set enable=True to rescale base_lr linearly when the real total batch differs from 32.
auto_scale_lr = dict(base_batch_size=batch_size, enable=False)
