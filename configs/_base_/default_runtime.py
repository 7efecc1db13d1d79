# Runtime shared by every experiment: hooks, logging to TensorBoard, seeds, distributed settings.
from mmengine.hooks import (
    CheckpointHook,
    DistSamplerSeedHook,
    IterTimerHook,
    LoggerHook,
    ParamSchedulerHook,
)
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer

from mtlora_vision.engine.visualization_hook import MultiTaskVisualizationHook

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=50),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, interval=20, max_keep_ckpts=3, save_last=True),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
custom_hooks = [dict(type=MultiTaskVisualizationHook, num_images=2)]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
visualizer = dict(
    type=Visualizer,
    vis_backends=[dict(type=LocalVisBackend), dict(type=TensorboardVisBackend)],
)
log_processor = dict(by_epoch=True, window_size=50)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, diff_rank_seed=True)
