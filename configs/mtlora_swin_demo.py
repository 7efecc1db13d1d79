# The built-in demo: MTLoRA on a small Swin, five PASCAL-Context tasks, synthetic data written in the
# real PASCAL_MT layout under data/demo_pascal on first use. Runs on a CPU in a few minutes,
# validates before training and every few epochs, and its metrics improve clearly.
#   python tools/train.py configs/mtlora_swin_demo.py
# The backbone starts from random weights (nothing is downloaded), so everything but the frozen
# Swin weights learns: adapters, patch embedding, norms, fusion and heads.
from mmengine.config import read_base
from mmengine.optim import OptimWrapper

from mtlora_vision.engine.validate_hook import ValidateBeforeTrainHook

with read_base():
    from ._base_.mtlora_pascal_recipe import *

tasks = ("semseg", "human_parts", "sal", "normals", "edge")
img_size = (128, 128)
data_root = "data/demo_pascal"  # every loader reads it; --data-root DIR moves them all
# Synthetic data is written only there: any other data_root must exist already.
demo_data = dict(root=data_root, num_train=64, num_val=16, size=(96, 128), seed=0)

model.tasks = tasks
model.backbone = dict(
    type=model.backbone.type,
    arch=dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    img_size=img_size[0],
    window_size=4,
    drop_path_rate=0.0,
    pretrained=None,
)
model.adapter.shared_rank = 8
model.adapter.task_rank = 4
model.fusion = dict(channels=(16, 16, 32, 32))

for loader in (train_dataloader, val_dataloader):
    loader.batch_size = 8
    loader.num_workers = 2
    loader.pin_memory = False
    loader.dataset.update(
        data_root=data_root,
        tasks=tasks,
        img_size=img_size,
        synthesize_if_missing=demo_data,
        cache_dir="data/.cache",
    )
test_dataloader = val_dataloader
val_evaluator.edge_ods = True  # cheap at 128x128: the demo shows every metric
# The demo's images are synthetic: no Delta-m against the paper's single-task baselines.
val_evaluator.baselines = dict()
test_evaluator = val_evaluator

max_epochs = 12
warmup_epochs = 1
optim_wrapper.type = OptimWrapper
optim_wrapper.pop("dtype")
optim_wrapper.optimizer.lr = 2e-3
# The recipe's linear warm-up and cosine, over the demo's epochs.
param_scheduler[0].update(start_factor=0.1, end=warmup_epochs)
param_scheduler[1].update(
    T_max=max_epochs - warmup_epochs, eta_min=2e-5, begin=warmup_epochs, end=max_epochs
)
train_cfg.max_epochs = max_epochs
train_cfg.val_interval = 6
default_hooks.logger.interval = 4
default_hooks.checkpoint.interval = 6
custom_hooks.append(dict(type=ValidateBeforeTrainHook))
env_cfg.cudnn_benchmark = False
# One torch thread on the CPU: on a shared 2-core machine, 2 threads made each step 4x slower.
cpu_threads = 1
auto_scale_lr.base_batch_size = 8
