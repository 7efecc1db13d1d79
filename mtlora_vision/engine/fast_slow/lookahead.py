"""Lookahead on named parameters (``fast_slow="lookahead"``) and its engine hook.

Lookahead (Zhang et al., 2019, "k steps forward, 1 step back") on the parameters whose names
contain one of ``keys`` (by default the slow prompt weights P0 and the shared factor). The inner
optimizer trains them as usual; every ``k`` optimizer steps their slow copies move
``slow <- slow + alpha (fast - slow)`` and the weights are reset to the slow copies. The slow
copies and the step count are saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from mmengine.hooks import Hook
from torch import Tensor, nn

from mtlora_vision.engine.fast_slow.prompts import claim_prompts, count_params
from mtlora_vision.engine.unwrap import unwrap_model

#: Checkpoint entries of the hooks' state.
LOOKAHEAD_KEY = "lookahead"


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
        claim_prompts(model, "lookahead", "LookaheadHook", required=False)
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
        tensors, numel = count_params(params.values())
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
