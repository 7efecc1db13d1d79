"""Model variants of a config that the benchmark times side by side (:data:`VARIANTS`).

* ``model``: the config as is (its trainable policy).
* ``frozen``: adapters removed (``adapter=None``) and the whole Swin frozen, same fusion and heads:
  the backward pass never enters the backbone.
* ``no_adapter``: adapters removed, the other backbone groups trainable as in the config's policy,
  so the backward pass runs through the backbone as it does for the model.
* ``checkpointed``: the config with activation checkpointing in every stage (and its element-wise
  recomputation, on by default, so recomputed blocks store lean activations; with ``True``, the
  default, the heads' BatchNorm + ReLU are recomputed too); ``checkpointed:0+1`` checkpoints only
  those stages (counted from 0);
* ``lean``: the config with element-wise recomputation (``recompute_elementwise=True``, the
  backbone's default); ``lean:PART+PART`` recomputes only those parts (``lean:gelu+dropout``;
  parts as in :data:`mtlora_vision.recompute.LEAN_PARTS`, or ``all``), so parts can be timed
  side by side;
* ``stored``: the config without element-wise recomputation (``recompute_elementwise=False``):
  every element-wise output stored for the backward pass.

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
from mtlora_vision.errors import ConfigError
from mtlora_vision.models.backbones.swin import resolve_arch
from mtlora_vision.recompute import lean_parts

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


def _with_checkpointing(model: ConfigDict, switches: bool | list[bool]) -> ConfigDict:
    model.backbone.grad_checkpointing = switches  # the stages' blocks recomputed in the backward
    return model  # with the config's recompute_elementwise (lean when recomputed, by default)


@register_variant("checkpointed")
def _checkpointed(model: ConfigDict) -> ConfigDict:
    return _with_checkpointing(model, True)


@register_variant("lean")
def _lean(model: ConfigDict) -> ConfigDict:
    model.backbone.recompute_elementwise = True  # element-wise outputs recomputed in backward
    return model


@register_variant("stored")
def _stored(model: ConfigDict) -> ConfigDict:
    model.backbone.recompute_elementwise = False  # every element-wise output kept for backward
    return model


#: Prefix of a ``lean`` variant with chosen parts: ``lean:gelu+dropout``.
LEAN_PREFIX = "lean:"
#: Prefix of a ``checkpointed`` variant with chosen stages: ``checkpointed:0+1``.
CHECKPOINTED_PREFIX = "checkpointed:"


def _stages_of(name: str) -> list[int]:
    """The stages a ``checkpointed:S+S`` variant names, checked to be distinct stage numbers."""
    fields = name[len(CHECKPOINTED_PREFIX) :].split("+")
    if not all(f.isdigit() for f in fields) or len(set(fields)) != len(fields):
        raise ConfigError(
            f"Variant {name!r}: give distinct stage numbers counted from 0, e.g. "
            f"{CHECKPOINTED_PREFIX}0+1."
        )
    return sorted(int(f) for f in fields)


def _checkpointed_stages(name: str) -> Callable[[ConfigDict], ConfigDict]:
    stages = _stages_of(name)

    def checkpointed_in(model: ConfigDict) -> ConfigDict:
        num_stages = len(resolve_arch(model.backbone.get("arch", "tiny"))["depths"])
        if stages[-1] >= num_stages:
            raise ConfigError(f"Variant {name!r}: the backbone has stages 0-{num_stages - 1}.")
        return _with_checkpointing(model, [i in stages for i in range(num_stages)])

    return checkpointed_in


def transform_of(name: str) -> Callable[[ConfigDict], ConfigDict]:
    """The model-dict transform of a variant (a :data:`VARIANTS` key or a prefixed name).

    Prefixed names: ``lean:PART+PART`` and ``checkpointed:STAGE+STAGE``.

    Raises:
        ConfigError: If the name is none of these, or names a part that does not exist or
            stages that are not distinct numbers.
    """
    if name in VARIANTS:
        return VARIANTS[name]
    if name.startswith(CHECKPOINTED_PREFIX):
        return _checkpointed_stages(name)
    if not name.startswith(LEAN_PREFIX):
        raise ConfigError(
            f"Unknown variant {name!r}; use one of {sorted(VARIANTS)}, {LEAN_PREFIX}PART+PART "
            f"or {CHECKPOINTED_PREFIX}STAGE+STAGE."
        )
    parts = name[len(LEAN_PREFIX) :].split("+")
    try:
        lean_parts(parts)
    except ValueError as err:
        raise ConfigError(f"Variant {name!r}: {err}") from None

    def lean_with(model: ConfigDict) -> ConfigDict:
        model.backbone.recompute_elementwise = parts
        return model

    return lean_with


@dataclass(frozen=True)
class VariantSpec:
    """One timed model: ``transform`` (a :data:`VARIANTS` key) applied to ``config``'s model."""

    name: str
    config: str
    transform: str


def variant_specs(args: argparse.Namespace) -> list[VariantSpec]:
    """CONFIG's ``--variants`` then one as-is variant per ``--methods`` config.

    Raises:
        ConfigError: If a variant name is not registered nor a ``lean:`` variant, or if two
            variants would get the same name.
    """
    for name in args.variants:
        transform_of(name)  # checks the name before anything is built
    specs = [VariantSpec(v, args.config, v) for v in dict.fromkeys(args.variants)]
    for path in args.methods or []:
        specs.append(VariantSpec(Path(path).stem, path, "model"))
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
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
    model = MODELS.build(transform_of(variant)(model_cfg))
    set_fast_slow_driver(model, "tools/benchmark.py")  # TA-LoRA lookahead/two_phase: step cost only
    return model
