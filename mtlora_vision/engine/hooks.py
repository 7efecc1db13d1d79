"""Training hooks: stop on non-finite losses, never save non-finite weights, DWA epoch windows.

How a NaN loss is kept out of the checkpoints (three layers, cheapest first):

1. In the model's loss path, :class:`~mtlora_vision.models.loss_weighting.LossWeighting` (with
   ``check_finite=True``, the default) raises ``NonFiniteLossError`` naming the task *before*
   backward, so the optimizer never steps on a NaN loss and the weights in memory stay finite.
2. :class:`NonFiniteLossHook` checks the logged loss values after every iteration and raises
   naming the task. It runs before mmengine's ``CheckpointHook`` (higher priority), so the same
   iteration cannot save; since training stops, no later save happens either. This covers models
   whose loss path does not check.
3. :meth:`NonFiniteLossHook.before_save_checkpoint` refuses to save a state dict with non-finite
   values (e.g. a finite loss whose gradients overflowed), raising before the file is written.

In every case the last good checkpoint and ``last_checkpoint`` stay as they were, so
``tools/train.py CONFIG --resume`` restarts from it (the messages name the checkpoint that
``--resume`` would take, :func:`mtlora_vision.engine.resume.latest_checkpoint_path`). Under DDP,
the rank that raises ends its process and torchrun then stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from mmengine.hooks import Hook
from torch import Tensor

from mtlora_vision.engine.resume import latest_checkpoint_path
from mtlora_vision.engine.unwrap import unwrap_model
from mtlora_vision.models.loss_weighting import DynamicWeightAverage
from mtlora_vision.models.losses import NonFiniteLossError, nonfinite_names

logger = logging.getLogger(__name__)

_TERM_PREFIXES = ("loss_", "raw_", "weight_")


class NonFiniteWeightsError(FloatingPointError):
    """Raised instead of saving a checkpoint whose weights are NaN or infinite."""


def task_of_log_key(key: str) -> str:
    """Map a log key to its task: ``loss_sal``/``raw_sal`` -> ``sal``, ``loss`` -> ``total``."""
    for prefix in _TERM_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return "total" if key == "loss" else key


def _as_float(value: Tensor | float) -> float:
    return float(torch.as_tensor(value).detach().float().mean())


def describe_nonfinite(values: Mapping[str, Tensor | float]) -> str | None:
    """Describe the non-finite entries of ``values`` by task, or return None if all are finite.

    Args:
        values: Logged scalars, e.g. mmengine's parsed ``log_vars``.

    Returns:
        A message such as ``"task(s) ['sal'] (loss_sal=nan, raw_sal=nan)"`` or None.
    """
    bad = nonfinite_names(values)
    if not bad:
        return None
    tasks = sorted({task_of_log_key(k) for k in bad} - ({"total"} if len(bad) > 1 else set()))
    shown = ", ".join(f"{k}={_as_float(values[k]):g}" for k in bad)
    return f"task(s) {tasks} ({shown})"


class NonFiniteLossHook(Hook):
    """Stop training when a loss is NaN or infinite, naming the task; never save such weights.

    Also refuses to write a checkpoint whose floating-point state-dict entries are not all finite.
    """

    priority = "ABOVE_NORMAL"  # before CheckpointHook (VERY_LOW) in after_train_iter

    def after_train_iter(
        self,
        runner,
        batch_idx: int,
        data_batch: object = None,
        outputs: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Raise :class:`NonFiniteLossError` if a logged value of this iteration is not finite."""
        problem = describe_nonfinite(outputs or {})
        if problem is None:
            return
        last = latest_checkpoint_path(runner.work_dir)
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}) for "
            f"{problem}. Training stopped without saving; the last good checkpoint is "
            f"{last or 'none (no checkpoint saved yet)'}. Lower the learning rate or check that "
            "task's data, then resume with --resume."
        )

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Raise :class:`NonFiniteWeightsError` instead of saving non-finite weights."""
        bad = nonfinite_names(checkpoint.get("state_dict", {}))
        if bad:
            last = latest_checkpoint_path(runner.work_dir)
            raise NonFiniteWeightsError(
                f"Refusing to save a checkpoint at iteration {runner.iter + 1}: {len(bad)} "
                f"state-dict entries are not finite, e.g. {bad[:5]}. The previous checkpoint "
                f"({last or 'none'}) is kept."
            )


class DWAEpochHook(Hook):
    """Close the loss windows of every per-epoch DWA module at the end of each training epoch.

    Only :class:`~mtlora_vision.models.loss_weighting.DynamicWeightAverage` modules built with
    ``window=None`` are touched; those with an iteration window close it themselves. It runs
    before ``CheckpointHook`` saves at the epoch's end, so the checkpoint holds the closed window.
    """

    priority = "NORMAL"

    def after_train_epoch(self, runner) -> None:
        """Call ``close_window()`` on each per-epoch DWA module of the model."""
        model = unwrap_model(runner.model)
        for module in model.modules():
            if isinstance(module, DynamicWeightAverage) and module.window is None:
                module.close_window()
                weights = dict(zip(module.tasks, module.current_weights().tolist(), strict=True))
                runner.logger.info(f"DWA weights for the next epoch: {weights}")
