"""Two-phase training of the prompts (``fast_slow="two_phase"``) as an engine hook.

Before ``switch_epoch`` the per-task fast factors are held (the shared prompt, the shared factor
and the gates train on every task); from it on the fast factors train and the slow weights are
held, or train at ``slow_lr_mult`` times their scheduled learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmengine.hooks import Hook
from torch import nn

from mtlora_vision.adapters.checks import check_int
from mtlora_vision.adapters.prompt import (
    PROMPT_FAST_KEY,
    PROMPT_SLOW_KEY,
    TaskAdaptiveLowRankPrompt,
)
from mtlora_vision.engine.fast_slow.prompts import claim_prompts, count_params, prompt_layers

TWO_PHASE_KEY = "two_phase"


class TwoPhaseHook(Hook):
    """Two-phase training of the prompts (``fast_slow="two_phase"``).

    Epochs ``< switch_epoch`` (0-based) are phase one: the fast per-task factors are held; P0,
    the shared factor, the gates and the rest of the trainable set train on every task. From
    ``switch_epoch`` on (phase two) the fast factors train; P0 and the shared factor are held, or,
    with ``slow_lr_mult``, train at that multiple of their groups' scheduled learning rate (the
    groups must hold only slow prompt weights: ``custom_keys={"prompt_slow": dict(lr_mult=1.0)}``).
    The phase is set before every epoch from the epoch number, so a resumed run is in the right
    phase; the switch settings are saved in checkpoints and a resume with other settings is refused.

    Args:
        switch_epoch: First epoch of phase two (0-based; 1-based it is ``switch_epoch + 1``).
        slow_lr_mult: ``None``: the slow weights are held in phase two; else a factor in
            ``(0, 1]`` on their learning rate.
    """

    priority = "NORMAL"

    def __init__(self, switch_epoch: int, slow_lr_mult: float | None = None) -> None:
        check_int("switch_epoch", switch_epoch)
        if slow_lr_mult is not None and not (
            isinstance(slow_lr_mult, (int, float)) and 0.0 < slow_lr_mult <= 1.0
        ):
            raise ValueError(
                f"slow_lr_mult must be None (slow weights held in phase two) or lie in (0, 1], "
                f"got {slow_lr_mult!r}."
            )
        self.switch_epoch = switch_epoch
        self.slow_lr_mult = slow_lr_mult
        self.phase: int | None = None
        self._restored: Mapping | None = None
        self._slow_groups: list[dict] = []
        self._saved_lrs: list[float] = []
        self._handles: list = []

    @property
    def settings(self) -> dict:
        """What a resumed run must share: ``{"switch_epoch", "slow_lr_mult"}``."""
        return {"switch_epoch": self.switch_epoch, "slow_lr_mult": self.slow_lr_mult}

    def frozen_roles(self, phase: int) -> tuple[str, ...]:
        """Roles held in ``phase`` (1 or 2)."""
        if phase == 1:
            return ("fast",)
        return ("slow",) if self.slow_lr_mult is None else ()

    def before_train(self, runner) -> None:
        """Check the model, the schedule and the optimizer groups; attach the lr multiplier."""
        claim_prompts(runner.model, "two_phase", "TwoPhaseHook", required=True)
        if self.switch_epoch >= runner.max_epochs:
            raise ValueError(
                f"TwoPhaseHook switch_epoch={self.switch_epoch} leaves no epoch for phase two "
                f"(max_epochs={runner.max_epochs}); choose 1 <= switch_epoch < max_epochs."
            )
        if runner.iter > 0 and self._restored is None:
            raise ValueError(
                f"Resuming at iteration {runner.iter} from a checkpoint of a run without "
                "TwoPhaseHook: its phases cannot be continued. Resume that run with its own "
                "config, or start a new run with load_from."
            )
        if runner.iter > 0 and self._restored != self.settings:
            raise ValueError(
                f"The checkpoint was trained with TwoPhaseHook {dict(self._restored)}, the config "
                f"asks for {self.settings}; resume with the run's own settings."
            )
        self._restored = None
        if self.slow_lr_mult is not None:
            optimizer = runner.optim_wrapper.optimizer
            self._slow_groups = slow_param_groups(runner.model, optimizer.param_groups)
            self._handles = [
                optimizer.register_step_pre_hook(lambda *_: self._scale_slow_lr()),
                optimizer.register_step_post_hook(lambda *_: self._restore_slow_lr()),
            ]

    def before_train_epoch(self, runner) -> None:
        """Set the held roles of every prompt layer for the epoch about to run; log a change."""
        phase = 1 if runner.epoch < self.switch_epoch else 2
        roles = self.frozen_roles(phase)
        layers = prompt_layers(runner.model)
        for layer in layers:
            layer.set_frozen_roles(roles)
        if phase != self.phase:
            self.phase = phase
            runner.logger.info(self._describe(phase, runner.epoch, layers))

    def after_train(self, runner) -> None:
        """Detach from the optimizer and release every role."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for layer in prompt_layers(runner.model):
            layer.set_frozen_roles(())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Record the switch settings under ``checkpoint["two_phase"]``."""
        checkpoint[TWO_PHASE_KEY] = self.settings

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the checkpoint's switch settings for the check in :meth:`before_train`."""
        self._restored = checkpoint.get(TWO_PHASE_KEY)

    def _scale_slow_lr(self) -> None:
        self._saved_lrs = []
        if self.phase != 2:
            return
        for group in self._slow_groups:
            self._saved_lrs.append(group["lr"])
            group["lr"] = group["lr"] * self.slow_lr_mult

    def _restore_slow_lr(self) -> None:
        for group, lr in zip(self._slow_groups, self._saved_lrs, strict=False):
            group["lr"] = lr
        self._saved_lrs = []

    def _describe(self, phase: int, epoch: int, layers: list[TaskAdaptiveLowRankPrompt]) -> str:
        roles = self.frozen_roles(phase)
        held = [p for layer in layers for n, p in layer.named_parameters() if _role(n) in roles]
        tensors, numel = count_params(held)
        held_text = f"held: {'/'.join(roles)} ({tensors} tensors, {numel} parameters)"
        if phase == 1:
            trains = "P0, shared factors, gates and the rest of the trainable set"
            return f"Two-phase: phase one from epoch {epoch + 1}: {trains} train; {held_text}."
        if self.slow_lr_mult is None:
            return f"Two-phase: phase two from epoch {epoch + 1}: fast factors train; {held_text}."
        return (
            f"Two-phase: phase two from epoch {epoch + 1}: fast factors train, P0 and shared "
            f"factors at {self.slow_lr_mult} x their learning rate; nothing held."
        )


def _role(name: str) -> str | None:
    """``"fast"``/``"slow"`` for a prompt parameter's name, else None (a gate)."""
    leaf = name.rpartition(".")[2]
    roles = ((PROMPT_FAST_KEY, "fast"), (PROMPT_SLOW_KEY, "slow"))
    return next((role for key, role in roles if leaf.startswith(key)), None)


def slow_param_groups(model: nn.Module, param_groups: list[dict]) -> list[dict]:
    """The optimizer groups holding the slow prompt weights, checked to hold nothing else.

    Raises:
        ValueError: If a group mixes slow prompt weights with other parameters (its learning
            rate cannot then be lowered for the slow ones alone), or no group holds them.
    """
    slow = {
        id(p)
        for layer in prompt_layers(model)
        for n, p in layer.named_parameters()
        if _role(n) == "slow"
    }
    groups = []
    for index, group in enumerate(param_groups):
        ids = {id(p) for p in group["params"]}
        if not ids & slow:
            continue
        if not ids <= slow:
            name = group.get("group_name", f"#{index}")
            raise ValueError(
                f"Optimizer group {name!r} mixes slow prompt weights with other parameters, so "
                "TwoPhaseHook(slow_lr_mult=...) cannot lower their learning rate alone; add "
                "'prompt_slow': dict(lr_mult=1.0) to optim_wrapper.paramwise_cfg.custom_keys."
            )
        groups.append(group)
    if not groups:
        raise ValueError("No optimizer group holds the slow prompt weights; are they trainable?")
    return groups
