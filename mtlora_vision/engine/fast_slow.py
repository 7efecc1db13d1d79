"""TA-LoRA's fast-slow mechanisms beyond separate learning rates (``docs/methods.md``).

Two engine hooks, one per ``fast_slow`` choice of
:class:`~mtlora_vision.adapters.task_conditioned_config.TALoRAPromptConfig`:

* :class:`LookaheadHook` (``fast_slow="lookahead"``): Lookahead (Zhang et al., 2019, "k steps
  forward, 1 step back") on the parameters whose names contain one of ``keys`` (by default the slow
  prompt weights P0 and the shared factor). The inner optimizer trains them as usual; every ``k``
  optimizer steps their slow copies move ``slow <- slow + alpha (fast - slow)`` and the weights are
  reset to the slow copies. The slow copies and the step count are saved in checkpoints.
* :class:`TwoPhaseHook` (``fast_slow="two_phase"``): before ``switch_epoch`` the per-task fast
  factors are held (the shared prompt, the shared factor and the gates train on every task); from
  it on the fast factors train and the slow weights are held, or train at ``slow_lr_mult`` times
  their scheduled learning rate.

Held parameters are detached in the forward pass
(:meth:`~mtlora_vision.adapters.prompt.TaskAdaptiveLowRankPrompt.set_frozen_roles`): their
``.grad`` stays ``None``, so gradient clipping ignores them and AdamW neither steps nor decays them.
Their ``requires_grad`` does not change, so they stay in the optimizer, in DDP's bucket layout and
in trainable-only checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from mmengine.hooks import Hook
from torch import Tensor, nn

from mtlora_vision.adapters.prompt import (
    PROMPT_FAST_KEY,
    PROMPT_SLOW_KEY,
    TaskAdaptiveLowRankPrompt,
)
from mtlora_vision.engine.unwrap import unwrap_model

#: Checkpoint entries of the hooks' state.
LOOKAHEAD_KEY = "lookahead"
TWO_PHASE_KEY = "two_phase"


@torch.no_grad()
def lookahead_sync(slow: Tensor, fast: Tensor, alpha: float) -> None:
    """Lookahead synchronisation in place: ``slow += alpha (fast - slow)``, then ``fast = slow``.

    Args:
        slow: Slow copy, any shape.
        fast: The trained weight, same shape as ``slow``.
        alpha: Slow step size in ``(0, 1]`` (1: the slow copy jumps to the weight, plain training).
    """
    slow.add_(fast - slow, alpha=alpha)
    fast.copy_(slow)


class Lookahead:
    """Slow copies of named parameters, synchronised every ``k`` calls of :meth:`step`.

    The slow copies start at the parameters' values when this object is built (Lookahead's
    ``phi_0 = theta_0``). Call :meth:`step` after every optimizer step.

    Args:
        params: ``{name: parameter}`` to follow.
        k: Optimizer steps between synchronisations (>= 1).
        alpha: Slow step size in ``(0, 1]``.
    """

    def __init__(self, params: Mapping[str, nn.Parameter], k: int, alpha: float) -> None:
        check_lookahead_args(k, alpha)
        if not params:
            raise ValueError("Lookahead got no parameters to follow.")
        self.params = dict(params)
        self.k, self.alpha = int(k), float(alpha)
        self.slow = {name: p.detach().clone() for name, p in self.params.items()}
        self.num_steps = 0

    def step(self) -> bool:
        """Count one optimizer step; synchronise on every ``k``-th. Returns whether it did."""
        self.num_steps += 1
        if self.num_steps % self.k:
            return False
        for name, param in self.params.items():
            lookahead_sync(self.slow[name], param.data, self.alpha)
        return True

    def state_dict(self) -> dict:
        """``{"k", "alpha", "num_steps", "slow": {name: tensor}}`` (tensors cloned)."""
        slow = {name: tensor.clone() for name, tensor in self.slow.items()}
        return {"k": self.k, "alpha": self.alpha, "num_steps": self.num_steps, "slow": slow}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the step count and slow copies of :meth:`state_dict`.

        Raises:
            ValueError: If ``k`` or ``alpha`` differ from this object's (a resumed run must sync
                on the same steps), or the slow copies' names or shapes differ from the params'.
        """
        if (state["k"], state["alpha"]) != (self.k, self.alpha):
            raise ValueError(
                f"Lookahead state has k={state['k']}, alpha={state['alpha']}, but the config "
                f"asks for k={self.k}, alpha={self.alpha}; resume with the run's own settings."
            )
        names, saved = set(self.params), set(state["slow"])
        if names != saved:
            raise ValueError(
                "Lookahead state follows other parameters: missing "
                f"{sorted(names - saved)[:5]}, unexpected {sorted(saved - names)[:5]}."
            )
        for name, param in self.params.items():
            tensor = state["slow"][name]
            if tensor.shape != param.shape:
                raise ValueError(
                    f"Lookahead slow copy of {name} has shape {tuple(tensor.shape)}, the "
                    f"parameter {tuple(param.shape)}."
                )
            self.slow[name] = tensor.detach().to(device=param.device, dtype=param.dtype).clone()
        self.num_steps = int(state["num_steps"])


def check_lookahead_args(k: int, alpha: float) -> None:
    """Raise ``ValueError`` unless ``k`` is an integer >= 1 and ``0 < alpha <= 1``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Lookahead k must be an integer >= 1, got k={k!r}.")
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"Lookahead alpha must lie in (0, 1], got alpha={alpha!r}.")


def prompt_layers(model: nn.Module) -> list[TaskAdaptiveLowRankPrompt]:
    """Every prompt adapter of ``model`` (unwrapped from DDP)."""
    return [m for m in unwrap_model(model).modules() if isinstance(m, TaskAdaptiveLowRankPrompt)]


def set_fast_slow_driver(model: nn.Module, driver: str) -> int:
    """Let the prompts of ``model`` train without their fast-slow hook, ``driver`` taking charge.

    For tools that time training steps (``tools/benchmark.py``): Lookahead and the two phases change
    what happens between optimizer steps, not the cost of one. Returns the number of prompt layers.
    """
    layers = prompt_layers(model)
    for layer in layers:
        layer.fast_slow_driver = driver
    return len(layers)


def _claim_prompts(model: nn.Module, mode: str, hook: str, required: bool) -> int:
    """Mark the prompt layers as driven by ``hook``; check they were built for ``mode``.

    Raises:
        ValueError: If a prompt layer was built with another ``fast_slow``, or ``required`` and
            the model has no prompt layer.
    """
    layers = prompt_layers(model)
    if required and not layers:
        raise ValueError(
            f"{hook} found no TaskAdaptiveLowRankPrompt in the model; remove it from "
            "custom_hooks or use a ta_lora_prompt adapter (TALoRAPromptConfig)."
        )
    other = sorted({layer.fast_slow for layer in layers} - {mode})
    if other:
        raise ValueError(
            f"{hook} drives fast_slow={mode!r}, but the model's prompts were built with "
            f"fast_slow={other}; set model.adapter.fast_slow={mode!r} or remove the hook."
        )
    for layer in layers:
        layer.fast_slow_driver = hook
    return len(layers)


def _count(params: Iterable[nn.Parameter]) -> tuple[int, int]:
    params = list(params)
    return len(params), sum(p.numel() for p in params)


class LookaheadHook(Hook):
    """Lookahead slow update of the parameters named by ``keys`` (``fast_slow="lookahead"``).

    Steps are optimizer steps (a step-post hook on the runner's optimizer), so gradient
    accumulation and steps skipped by the AMP loss scaler are not counted. The state (step count,
    slow copies) goes into every checkpoint under ``"lookahead"`` and is restored on resume; a run
    that starts at iteration 0 (also from ``load_from``) starts fresh slow copies.

    Args:
        k: Optimizer steps between synchronisations.
        alpha: Slow step size in ``(0, 1]``.
        keys: A parameter is followed if its name contains one of them (as ``custom_keys``);
            default the slow prompt weights.

    Raises:
        ValueError: On bad ``k``/``alpha``/``keys``; at the start of training if no trainable
            parameter matches, a prompt layer was built for another ``fast_slow``, or a resumed
            run's checkpoint has no Lookahead state.
    """

    priority = "NORMAL"

    def __init__(self, k: int = 5, alpha: float = 0.5, keys: Iterable[str] = ("prompt_slow",)):
        check_lookahead_args(k, alpha)
        self.keys = tuple(keys)
        if not self.keys or not all(isinstance(key, str) and key for key in self.keys):
            raise ValueError(f"LookaheadHook keys must be non-empty strings, got {keys!r}.")
        self.k, self.alpha = k, alpha
        self.lookahead: Lookahead | None = None
        self._restored: Mapping | None = None
        self._handle = None

    def before_train(self, runner) -> None:
        """Pick the parameters, restore or start the slow copies, attach to the optimizer."""
        model = unwrap_model(runner.model)
        _claim_prompts(model, "lookahead", "LookaheadHook", required=False)
        params = {
            name: p
            for name, p in model.named_parameters()
            if p.requires_grad and any(key in name for key in self.keys)
        }
        if not params:
            raise ValueError(
                f"LookaheadHook(keys={list(self.keys)}) matches no trainable parameter of the "
                "model; name parameters the model trains (e.g. 'prompt_slow')."
            )
        self.lookahead = Lookahead(params, self.k, self.alpha)
        tensors, numel = _count(params.values())
        if runner.iter > 0:
            if self._restored is None:
                raise ValueError(
                    f"Resuming at iteration {runner.iter} from a checkpoint without Lookahead "
                    "state (saved by a run without LookaheadHook): the slow copies are lost. "
                    "Resume that run with its own config, or start a new run with load_from."
                )
            self.lookahead.load_state_dict(self._restored)
            runner.logger.info(
                f"Lookahead resumed after {self.lookahead.num_steps} optimizer steps "
                f"({tensors} tensors, {numel} parameters)."
            )
        elif self._restored is not None:
            runner.logger.info("Lookahead starts fresh slow copies (training from iteration 0).")
        self._restored = None
        runner.logger.info(
            f"Lookahead on {tensors} tensors ({numel} parameters) matching {list(self.keys)}: "
            f"every {self.k} optimizer steps, slow += {self.alpha} (fast - slow), fast = slow."
        )
        optimizer = runner.optim_wrapper.optimizer
        self._handle = optimizer.register_step_post_hook(lambda *_: self.lookahead.step())

    def after_train(self, runner) -> None:
        """Detach from the optimizer."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Store the step count and slow copies under ``checkpoint["lookahead"]``."""
        if self.lookahead is not None:
            checkpoint[LOOKAHEAD_KEY] = self.lookahead.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the checkpoint's Lookahead state for :meth:`before_train`."""
        self._restored = checkpoint.get(LOOKAHEAD_KEY)


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
        if isinstance(switch_epoch, bool) or not isinstance(switch_epoch, int) or switch_epoch < 1:
            raise ValueError(f"switch_epoch must be an integer >= 1, got {switch_epoch!r}.")
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
        _claim_prompts(runner.model, "two_phase", "TwoPhaseHook", required=True)
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
        tensors, numel = _count(held)
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
