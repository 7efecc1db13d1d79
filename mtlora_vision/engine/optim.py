"""Optimizer parameter groups of the official MTLoRA recipe (``docs/recipe.md#optimizer``).

AdamW with weight decay (0.05 in the recipe) on every parameter with ``ndim >= 2`` whose name does
not end in ``.bias``, and no decay on 1-D (and 0-d) parameters and biases. As in the official code
there are no other exemptions: relative-position tables, LoRA A/B and conv weights are decayed.

Only trainable parameters enter the groups. The official code builds its groups before freezing;
the frozen parameters then never receive a gradient, and AdamW skips parameters without one
(including their decoupled weight decay), so the optimisation is the same.

Named groups with their own learning rate or decay (e.g. TA-LoRA's fast and slow weights) are given
as ``paramwise_cfg=dict(custom_keys={"lora_fast": dict(lr_mult=10.0)})``: a parameter whose name
contains a key joins that key's groups (the longest matching key wins, as in mmengine), still
split into decay and no-decay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from mtlora_vision.engine.unwrap import unwrap_model

logger = logging.getLogger(__name__)

_CUSTOM_FIELDS = frozenset({"lr_mult", "decay_mult"})


def uses_weight_decay(name: str, ndim: int) -> bool:
    """Official rule: decay parameters with ``ndim >= 2`` whose name does not end in ``.bias``."""
    return ndim >= 2 and not name.endswith(".bias")


def _match_key(name: str, keys: list[str]) -> str | None:
    """Return the longest of ``keys`` contained in ``name`` (keys are pre-sorted longest first)."""
    return next((key for key in keys if key in name), None)


def official_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    custom_keys: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict]:
    """Build the official decay / no-decay groups over the trainable parameters of ``model``.

    Args:
        model: Model whose ``requires_grad`` parameters are optimised.
        lr: Base learning rate.
        weight_decay: Decay of the decay groups (the no-decay groups get 0).
        custom_keys: ``{substring: {"lr_mult": float, "decay_mult": float}}`` for named groups.

    Returns:
        Param groups ``{"params", "lr", "weight_decay", "group_name"}``, in order of first use:
        ``decay``, ``no_decay``, then ``<key>.decay`` / ``<key>.no_decay`` per custom key.

    Raises:
        ValueError: If a custom key's spec has fields other than ``lr_mult``/``decay_mult``.
    """
    custom_keys = dict(custom_keys or {})
    for key, spec in custom_keys.items():
        unknown = set(spec) - _CUSTOM_FIELDS
        if unknown:
            raise ValueError(
                f"custom_keys[{key!r}] has unknown field(s) {sorted(unknown)}; "
                f"use {sorted(_CUSTOM_FIELDS)}."
            )
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    groups: dict[str, dict] = {}
    used: set[str] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = _match_key(name, keys)
        spec = custom_keys.get(key, {}) if key is not None else {}
        decay = uses_weight_decay(name, param.ndim)
        kind = "decay" if decay else "no_decay"
        group_name = kind if key is None else f"{key}.{kind}"
        if group_name not in groups:
            groups[group_name] = {
                "params": [],
                "lr": lr * spec.get("lr_mult", 1.0),
                "weight_decay": weight_decay * spec.get("decay_mult", 1.0) if decay else 0.0,
                "group_name": group_name,
            }
        groups[group_name]["params"].append(param)
        if key is not None:
            used.add(key)
    for key in set(keys) - used:
        logger.warning("custom_keys entry %r matches no trainable parameter.", key)
    return list(groups.values())


class OfficialOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine optimizer-wrapper constructor that builds :func:`official_param_groups`.

    Use it in a config as ``optim_wrapper = dict(constructor=OfficialOptimWrapperConstructor,
    optimizer=dict(type=AdamW, lr=..., weight_decay=0.05), paramwise_cfg=dict(custom_keys=...))``.
    The optimizer's ``lr`` and ``weight_decay`` are the base values; ``paramwise_cfg`` may only hold
    ``custom_keys``.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optimizer over the official groups and wrap it."""
        model = unwrap_model(model)
        unknown = set(self.paramwise_cfg) - {"custom_keys"}
        if unknown:
            raise ValueError(
                "OfficialOptimWrapperConstructor: unsupported paramwise_cfg key(s) "
                f"{sorted(unknown)}; only custom_keys is read."
            )
        if self.base_lr is None or self.base_wd is None:
            raise ValueError(
                "OfficialOptimWrapperConstructor needs optimizer.lr and optimizer.weight_decay in "
                f"the config; got lr={self.base_lr}, weight_decay={self.base_wd}."
            )
        groups = official_param_groups(
            model, self.base_lr, self.base_wd, self.paramwise_cfg.get("custom_keys")
        )
        if not groups:
            raise ValueError("The model has no trainable parameter; nothing to optimise.")
        optimizer_cfg = dict(self.optimizer_cfg, params=groups)
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        for group in groups:
            logger.info(
                "Param group %s: %d tensors, lr %.3g, weight decay %g.",
                group["group_name"],
                len(group["params"]),
                group["lr"],
                group["weight_decay"],
            )
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
