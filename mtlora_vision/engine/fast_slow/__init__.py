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

from mtlora_vision.engine.fast_slow.lookahead import (
    LOOKAHEAD_KEY,
    Lookahead,
    LookaheadHook,
    check_lookahead_args,
    lookahead_sync,
)
from mtlora_vision.engine.fast_slow.prompts import prompt_layers, set_fast_slow_driver
from mtlora_vision.engine.fast_slow.two_phase import TWO_PHASE_KEY, TwoPhaseHook, slow_param_groups

__all__ = [
    "LOOKAHEAD_KEY",
    "TWO_PHASE_KEY",
    "Lookahead",
    "LookaheadHook",
    "TwoPhaseHook",
    "check_lookahead_args",
    "lookahead_sync",
    "prompt_layers",
    "set_fast_slow_driver",
    "slow_param_groups",
]
