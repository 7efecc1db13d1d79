"""Adapter-only state dicts: save and load just the low-rank parameters of a model.

MTLoRA (Agiza et al., CVPR 2024). Adapter parameters are found structurally: every parameter of an
``MTLoRALinear`` or ``MTLLoRALinear`` that is not under its ``base_layer`` (low-rank pairs,
trainable scales, the ``addition`` mode's LayerNorm, MTL-LoRA's transforms and mixing logits), and
every parameter of a ``TaskAdaptiveLowRankPrompt`` (prompts, factors, gates). Pretrained weights
never enter these dicts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mtlora_vision.adapters.mtl_lora import MTLLoRALinear
from mtlora_vision.adapters.mtlora import MTLoRALinear
from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt

#: Adapter layers that wrap a frozen ``base_layer``.
WRAPPER_TYPES: tuple[type[nn.Module], ...] = (MTLoRALinear, MTLLoRALinear)

#: Adapter modules all of whose parameters are adapter parameters.
STANDALONE_TYPES: tuple[type[nn.Module], ...] = (TaskAdaptiveLowRankPrompt,)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of all adapter parameters of ``model``, in ``named_parameters`` order."""
    names = []
    for module_name, module in model.named_modules():
        if not isinstance(module, WRAPPER_TYPES + STANDALONE_TYPES):
            continue
        prefix = f"{module_name}." if module_name else ""
        names += [
            prefix + n for n, _ in module.named_parameters() if not n.startswith("base_layer.")
        ]
    return names


def base_layer_parameter_names(model: nn.Module) -> list[str]:
    """Names of the wrapped (pretrained) parameters of every adapter layer of ``model``."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, WRAPPER_TYPES):
            prefix = f"{module_name}." if module_name else ""
            names += [f"{prefix}base_layer.{n}" for n, _ in module.base_layer.named_parameters()]
    return names


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Return detached copies of the adapter parameters of ``model``, keyed by parameter name."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in adapter_parameter_names(model)}


def load_adapter_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> list[str]:
    """Copy adapter parameters into ``model``.

    Args:
        model: Model with adapter layers (not merged).
        state_dict: Output of :func:`adapter_state_dict`.
        strict: Require exactly the model's adapter keys.

    Returns:
        The keys that were loaded.

    Raises:
        KeyError: If ``strict`` and keys are missing or unexpected (all are listed), or if a key is
            not an adapter parameter of the model.
        ValueError: If shapes differ, or if the model has merged adapters (unmerge first).
    """
    if any(isinstance(m, WRAPPER_TYPES) and m.merged for m in model.modules()):
        raise ValueError("The model has merged adapters; call unmerge_adapters(model) first.")
    expected = adapter_parameter_names(model)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected or (strict and missing):
        raise KeyError(
            f"Adapter state dict does not fit the model: missing {missing}, unexpected "
            f"{unexpected}. Was it saved from a model with the same tasks and target layers?"
        )
    params = dict(model.named_parameters())
    bad = [
        f"{k}: {tuple(v.shape)} vs model {tuple(params[k].shape)}"
        for k, v in state_dict.items()
        if v.shape != params[k].shape
    ]
    if bad:
        raise ValueError(f"Adapter shapes differ (other ranks?): {bad}.")
    with torch.no_grad():
        for key, value in state_dict.items():
            params[key].copy_(value)
    return sorted(state_dict)
