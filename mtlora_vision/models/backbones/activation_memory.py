"""Activation-memory switches of a backbone: element-wise recomputation and checkpointing.

Two ways to trade compute for the activation memory of a training step:

* ``recompute_elementwise`` (``True`` by default): outputs of LayerNorm, GELU, dropout and the
  window partition (or chosen parts, the heads' BatchNorm + ReLU too) are recomputed in the
  backward pass from inputs that are stored anyway, and dropout masks are stored as bool
  (:mod:`mtlora_vision.recompute`); about one extra element-wise pass. At 448x448, batch 2, with
  the tools' mimalloc: 0.72x the peak RSS of storing everything at 0.98x its step time in fp32,
  0.82x at 1.12x in bf16 (docs/speed.md). ``False`` stores every output.
* ``grad_checkpointing`` (off by default, per stage): every block of a switched-on stage keeps
  only its input and runs again in the backward pass (``torch.utils.checkpoint``, non-reentrant,
  random state of DropPath and dropout restored); about one extra forward pass of the backbone.
  While any stage checkpoints, ``recompute_elementwise=True`` includes the heads' BatchNorm +
  ReLU (memory first; :data:`~mtlora_vision.recompute.CHECKPOINTING_LEAN_PARTS`).

Both keep the gradients exactly those of the plain pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint

from mtlora_vision.adapters.config import per_stage
from mtlora_vision.recompute import lean_checkpoint, lean_parts


class ActivationMemory:
    """Mixin for a backbone with ``num_stages`` stages (see the module docstring)."""

    num_stages: int
    grad_checkpointing: tuple[bool, ...]
    _recompute_setting: bool | frozenset[str] = False

    @property
    def recompute_elementwise(self) -> frozenset[str]:
        """The element-wise parts recomputed (:data:`~mtlora_vision.recompute.LEAN_PARTS`).

        Set it to a ``recompute_elementwise`` setting (:func:`~mtlora_vision.recompute.lean_parts`);
        ``True`` selects the heads too while any stage checkpoints.
        """
        return lean_parts(self._recompute_setting, checkpointing=any(self.grad_checkpointing))

    @recompute_elementwise.setter
    def recompute_elementwise(self, setting: bool | Sequence[str]) -> None:
        parts = lean_parts(setting)  # a wrong part name is an error now, not at the first step
        self._recompute_setting = setting if isinstance(setting, bool) else parts

    def set_grad_checkpointing(self, enable: bool | Sequence[bool] = True) -> None:
        """Switch activation checkpointing on or off, for all stages or one value per stage.

        A checkpointed block stores only its input tokens (a stage's last block, whose task
        branch is checkpointed in two parts, its attention output too); its forward pass
        (attention, MLP, adapters, the task branch and the next stage's patch merging) runs again
        in the backward pass, with the random state of DropPath and dropout restored,
        so gradients are exactly those of the plain pass. It trades about one more forward pass
        for the activation memory of all blocks but one: use it when a batch does not fit
        otherwise (e.g. the paper's batch 32 at 448x448).

        Raises:
            ValueError: If a sequence does not have one value per stage.
        """
        switches = per_stage(enable, self.num_stages, "grad_checkpointing")
        self.grad_checkpointing = tuple(bool(s) for s in switches)

    def maybe_checkpoint(self, stage: int, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, checkpointed if ``stage`` is switched on and gradients are recorded."""
        if not (self.grad_checkpointing[stage] and torch.is_grad_enabled()):
            return fn(*args)
        if self.recompute_elementwise:  # the recomputed block stores lean activations too
            return lean_checkpoint(fn, *args, lean=self.recompute_elementwise)
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
