# Runtime shared by every experiment: hooks, logging to TensorBoard, seeds, distributed settings.
from mmengine.hooks import (
    DistSamplerSeedHook,
    IterTimerHook,
    LoggerHook,
    ParamSchedulerHook,
)
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer

from mtlora_vision.engine.checkpoint import AtomicCheckpointHook, TrainableCheckpointHook
from mtlora_vision.engine.hooks import DWAEpochHook, NonFiniteLossHook
from mtlora_vision.engine.randomness import TrainingRandomnessHook
from mtlora_vision.engine.resume_settings import ResumeSettingsHook
from mtlora_vision.engine.visualization_hook import MultiTaskVisualizationHook

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    # Validation scalars on the training scalars' step axis (iterations) in TensorBoard.
    logger=dict(type=LoggerHook, interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type=ParamSchedulerHook),
    # Atomic writes: a crash mid-save never corrupts the latest checkpoint.
    checkpoint=dict(type=AtomicCheckpointHook, interval=20, max_keep_ckpts=3, save_last=True),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
custom_hooks = [
    # Checkpoints hold the trainable weights only (the frozen backbone reloads from its source);
    # set full_weights=True for a self-contained export. Loading checks the keys strictly.
    dict(type=TrainableCheckpointHook, full_weights=False),
    # Stops on a NaN/inf loss naming the task, keeping the last good checkpoint.
    dict(type=NonFiniteLossHook),
    dict(type=MultiTaskVisualizationHook, num_images=2),
    # Closes the per-epoch loss windows of DWA weighting (model.losses.weighting.type="dwa");
    # does nothing for the other schemes.
    dict(type=DWAEpochHook),
    # Random state of each step a function of (seed, iteration, rank): kill + --resume is exact.
    dict(type=TrainingRandomnessHook),
    # On --resume a changed lr/schedule/clipping takes effect (logged); a changed model is refused.
    dict(type=ResumeSettingsHook),
]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # on machines without CUDA the tools use gloo
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
