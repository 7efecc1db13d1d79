"""Model variants of a config that the benchmark times side by side (:data:`VARIANTS`).

* ``model``: the config as is (its trainable policy).
* ``frozen``: adapters removed (``adapter=None``) and the whole Swin frozen, same fusion and heads:
  the backward pass never enters the backbone.
* ``no_adapter``: adapters removed, the other backbone groups trainable as in the config's policy,
  so the backward pass runs through the backbone as it does for the model.
* ``checkpointed``: the config with activation checkpointing in every stage and element-wise
  recomputation of every part (the heads' BatchNorm + ReLU too);
* ``lean``: the config with element-wise recomputation (``recompute_elementwise=True``).

Add more with :func:`register_variant`.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmengine.config import Config, ConfigDict
from mmengine.registry import MODELS
from torch import nn

from mtlora_vision.engine.fast_slow import set_fast_slow_driver
from mtlora_vision.engine.runtime import load_config

#: Variant name -> function turning the config's model dict into the variant's.
VARIANTS: dict[str, Callable[[ConfigDict], ConfigDict]] = {}

BACKBONE_GROUPS = ("adapters", "patch_embed", "norms", "rel_pos", "downsample", "backbone")


def register_variant(name: str) -> Callable:
    """Decorator adding a model-dict transform to :data:`VARIANTS`."""

    def wrap(fn: Callable[[ConfigDict], ConfigDict]) -> Callable[[ConfigDict], ConfigDict]:
        VARIANTS[name] = fn
        return fn

    return wrap


@register_variant("model")
def _as_is(model: ConfigDict) -> ConfigDict:
    return model


@register_variant("frozen")
def _frozen(model: ConfigDict) -> ConfigDict:
    model.adapter = None
    trainable = dict(model.get("trainable") or {})
    trainable.update(dict.fromkeys(BACKBONE_GROUPS, False))
    model.trainable = trainable
    return model


@register_variant("no_adapter")
def _no_adapter(model: ConfigDict) -> ConfigDict:
    model.adapter = None
    return model


@register_variant("checkpointed")
def _checkpointed(model: ConfigDict) -> ConfigDict:
    model.backbone.grad_checkpointing = True  # every stage's blocks recomputed in the backward
    model.backbone.recompute_elementwise = "all"  # and stored lean when recomputed, heads too
    return model


@register_variant("lean")
def _lean(model: ConfigDict) -> ConfigDict:
    model.backbone.recompute_elementwise = True  # element-wise outputs recomputed in backward
    return model


@dataclass(frozen=True)
class VariantSpec:
    """One timed model: ``transform`` (a :data:`VARIANTS` key) applied to ``config``'s model."""

    name: str
    config: str
    transform: str


def variant_specs(args: argparse.Namespace) -> list[VariantSpec]:
    """CONFIG's ``--variants`` then one as-is variant per ``--methods`` config.

    Raises:
        KeyError: If a variant name is not registered.
        ValueError: If two variants would get the same name.
    """
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise KeyError(f"Unknown variants {unknown}; registered: {sorted(VARIANTS)}.")
    specs = [VariantSpec(v, args.config, v) for v in dict.fromkeys(args.variants)]
    for path in args.methods or []:
        specs.append(VariantSpec(Path(path).stem, path, "model"))
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Variant names {duplicates} appear twice; give each --methods config its own file "
            "name and do not list CONFIG again."
        )
    return specs


def phase_specs(specs: list[VariantSpec], phase: str) -> list[VariantSpec]:
    """Variants timed in ``phase``: merged inference skips ``no_adapter`` (nothing to merge)."""
    if phase != "infer_merged":
        return specs
    return [s for s in specs if s.transform in ("model", "frozen")]


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_cfg(path: str, cfg_options: dict | None = None) -> Config:
    """The config at ``path`` with ``cfg_options`` merged (they apply to every config)."""
    return load_config(path, cfg_options)


def build_variant(cfg: Config, variant: str, img_size: int) -> nn.Module:
    """Build one variant's model (random weights; nothing is downloaded)."""
    model_cfg = copy.deepcopy(cfg.model)
    if "backbone" in model_cfg:
        model_cfg.backbone.pretrained = None
        model_cfg.backbone.img_size = img_size
    if variant not in VARIANTS:
        raise KeyError(f"Unknown variant {variant!r}; registered: {sorted(VARIANTS)}.")
    model = MODELS.build(VARIANTS[variant](model_cfg))
    set_fast_slow_driver(model, "tools/benchmark.py")  # TA-LoRA lookahead/two_phase: step cost only
    return model
