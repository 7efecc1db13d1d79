"""Find target layers by name and wrap them with adapter layers (peft-style injection).

The one injection entry of the package. The model decides *which* layers get *which* settings (a
mapping from module name to a layer spec); :func:`inject_adapters` matches names, builds the layer
the spec's type asks for (:func:`build_adapter_layer`) and swaps the modules, so it knows nothing
about any particular backbone. Spec types: :class:`~mtlora_vision.adapters.config.AdapterSpec`
(MTLoRA, and plain LoRA without tasks) and :class:`~mtlora_vision.adapters.mtl_lora.MTLLoRASpec`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from torch import nn

from mtlora_vision.adapters.config import AdapterSpec
from mtlora_vision.adapters.mtl_lora import MTLLoRALinear, MTLLoRASpec
from mtlora_vision.adapters.mtlora import MTLoRALinear

LayerSpec: TypeAlias = AdapterSpec | MTLLoRASpec

logger = logging.getLogger(__name__)


def match_targets(names: Iterable[str], targets: str | Sequence[str]) -> list[str]:
    """Select module names the way peft's ``target_modules`` does.

    Args:
        names: Candidate (dotted) module names.
        targets: A sequence of names, each matching a module called exactly that or ending in
            ``"." + name``; or a string, a regular expression that must match the whole name.

    Returns:
        The matching names, in the order given.
    """
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return [n for n in names if pattern.fullmatch(n)]
    suffixes = tuple(targets)
    return [n for n in names if n in suffixes or n.endswith(tuple("." + s for s in suffixes))]


def build_adapter_layer(module: nn.Linear, spec: LayerSpec) -> nn.Module:
    """The adapter layer that ``spec``'s type names, wrapping ``module``.

    Raises:
        TypeError: For a spec of another type.
    """
    if isinstance(spec, AdapterSpec):
        return MTLoRALinear.from_spec(module, spec)
    if isinstance(spec, MTLLoRASpec):
        return MTLLoRALinear.from_spec(module, spec)
    raise TypeError(
        f"No adapter layer for a {type(spec).__name__}; use AdapterSpec or MTLLoRASpec."
    )


def inject_adapters(root: nn.Module, specs: Mapping[str, LayerSpec]) -> dict[str, nn.Module]:
    """Replace each named ``nn.Linear`` of ``root`` by the adapter layer of its spec.

    Args:
        root: Module to modify in place.
        specs: Module name (relative to ``root``) -> layer settings, built in this order.

    Returns:
        Module name -> new adapter layer.

    Raises:
        KeyError: If a name is not a submodule of ``root``.
        TypeError: If a named module is not a plain ``nn.Linear`` (e.g. already wrapped).
    """
    layers: dict[str, nn.Module] = {}
    for name, spec in specs.items():
        try:
            module = root.get_submodule(name)
        except AttributeError as err:
            raise KeyError(f"No module {name!r} to adapt in {type(root).__name__}.") from err
        if type(module) is not nn.Linear:
            raise TypeError(
                f"Module {name!r} is a {type(module).__name__}; only a plain nn.Linear can be "
                "adapted."
            )
        parent_name, _, leaf = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        layer = build_adapter_layer(module, spec)
        setattr(parent, leaf, layer)
        layers[name] = layer
    logger.debug("Injected %d adapter layers.", len(layers))
    return layers


def adapter_layers(root: nn.Module) -> dict[str, MTLoRALinear]:
    """Return every ``MTLoRALinear`` of ``root`` by module name."""
    return {n: m for n, m in root.named_modules() if isinstance(m, MTLoRALinear)}
