"""Warm-up epochs of the TA-LoRA-style prompt adapter (``docs/methods.md#ta-lora``).

During the first ``warmup_epochs`` training epochs every
:class:`~mtlora_vision.adapters.prompt.TaskAdaptiveLowRankPrompt` of the model is put in warm-up
(:meth:`~mtlora_vision.adapters.prompt.TaskAdaptiveLowRankPrompt.set_warmup`); afterwards it is
taken out. What warm-up changes is the layer's ``warmup_mode``: ``"frozen_gate"`` holds the task
gate (0 for a fresh layer, so immature task tokens stay out of the output), ``"learn_gate"`` trains
it from 0 as usual. The state is set again before every epoch, so a resumed run lands in the right
phase without storing anything in the checkpoint.
"""

from __future__ import annotations

from mmengine.hooks import Hook
from torch import nn

from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt
from mtlora_vision.engine.unwrap import unwrap_model


def set_prompt_warmup(model: nn.Module, active: bool) -> int:
    """Enter or leave warm-up in every prompt adapter of ``model``.

    Returns:
        The number of prompt adapters updated.
    """
    layers = [m for m in model.modules() if isinstance(m, TaskAdaptiveLowRankPrompt)]
    for layer in layers:
        layer.set_warmup(active)
    return len(layers)


class PromptWarmupHook(Hook):
    """Keep prompt adapters in warm-up for the first ``warmup_epochs`` epochs (0-based ``< N``).

    Args:
        warmup_epochs: Number of warm-up epochs; 0 disables warm-up.

    Raises:
        ValueError: If ``warmup_epochs`` is negative, or (at the start of training) the model has
            no prompt adapter, so the hook would do nothing.
    """

    priority = "NORMAL"

    def __init__(self, warmup_epochs: int) -> None:
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}.")
        self.warmup_epochs = int(warmup_epochs)

    def before_train(self, runner) -> None:
        """Refuse a model without prompt adapters (a config mistake, not a no-op)."""
        if set_prompt_warmup(unwrap_model(runner.model), False) == 0:
            raise ValueError(
                "PromptWarmupHook found no TaskAdaptiveLowRankPrompt in the model; remove the "
                "hook from custom_hooks or use a ta_lora_prompt adapter (TALoRAPromptConfig)."
            )

    def before_train_epoch(self, runner) -> None:
        """Set the warm-up state of every prompt adapter for the epoch about to run."""
        active = runner.epoch < self.warmup_epochs
        set_prompt_warmup(unwrap_model(runner.model), active)
        if runner.epoch in (0, self.warmup_epochs):
            state = "on" if active else "off"
            runner.logger.info(f"Prompt warm-up {state} from epoch {runner.epoch + 1}.")
