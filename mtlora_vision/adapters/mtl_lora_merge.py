"""Per-task merged MTL-LoRA weights: single-task inference at the cost of the frozen model.

MTL-LoRA (Yang et al., arXiv 2410.09437). Once training ends, ``Delta W_t = s * B~_t Lambda_t A``
is one fixed matrix per task and layer, so a model serving a single task can run every MTL-LoRA
layer as a plain linear layer with ``W + Delta W_t`` (the official code accepts ``merge_weights``
but never implements it; docs/methods.md#mtl-lora-official-release). There is no single merged
model for all tasks: serving T tasks from merged weights takes T copies of ``W``, or the on-the-fly
merge of :func:`set_merge_at_inference`.

* :func:`set_merge_at_inference`: without autograd, let every layer merge ``W + Delta W_t`` on the
  fly where that is cheaper (:meth:`~mtlora_vision.adapters.mtl_lora.MTLLoRALinear.forward`).
* :func:`merge_task` / :func:`unmerge_task`: fold one task into every MTL-LoRA layer in place
  (then only that task can run), and take it out again.
* :func:`task_merged_state_dict`: export one task's model as the state dict of the *adapter-free*
  model: wrapper keys ``<layer>.base_layer.weight`` become ``<layer>.weight`` with the update
  folded in, adapter tensors are dropped. Shared LoRA layers without task adapters (what a
  task-conditioned backbone uses before its branch stage) fold their shared update the same way.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from mtlora_vision.adapters.mtl_lora import MTLLoRALinear
from mtlora_vision.adapters.mtlora import MTLoRALinear
from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt

logger = logging.getLogger(__name__)

_BASE = "base_layer."


def _mtl_lora_layers(module: nn.Module) -> list[MTLLoRALinear]:
    return [m for m in module.modules() if isinstance(m, MTLLoRALinear)]


def set_merge_at_inference(module: nn.Module, enabled: bool) -> int:
    """Switch the on-the-fly merged inference path of every :class:`MTLLoRALinear` in ``module``.

    Args:
        module: Any module (a backbone, a block, or a layer).
        enabled: Whether layers merge ``W + Delta W_t`` on the fly when autograd is off.

    Returns:
        The number of layers updated.
    """
    layers = _mtl_lora_layers(module)
    for layer in layers:
        layer.merge_at_inference = bool(enabled)
    return len(layers)


def merge_task(module: nn.Module, task: str) -> int:
    """Fold ``Delta W_t`` of ``task`` into the weights of every MTL-LoRA layer of ``module``.

    Afterwards only single-task batches of ``task`` run (one-task layouts such as ``"sal"`` or
    ``("sal",)``); other layouts raise until :func:`unmerge_task`. Save checkpoints unmerged.

    Args:
        module: Any module holding :class:`~mtlora_vision.adapters.mtl_lora.MTLLoRALinear` layers.
        task: Task to merge.

    Returns:
        The number of layers merged.

    Raises:
        ValueError: If another task is merged in some layer.
        KeyError: If a layer has no adapter for ``task``.
    """
    layers = _mtl_lora_layers(module)
    for layer in layers:
        layer.merge(task)
    logger.info("Merged MTL-LoRA task %r into %d layers.", task, len(layers))
    return len(layers)


def unmerge_task(module: nn.Module) -> int:
    """Take the merged task out of every MTL-LoRA layer of ``module``; return how many."""
    layers = [layer for layer in _mtl_lora_layers(module) if layer.merged]
    for layer in layers:
        layer.unmerge()
    return len(layers)


def _plain_weight(layer: nn.Module, task: str, name: str) -> Tensor:
    """The weight of one adapter layer with its update folded in, ``(out, in)``."""
    if isinstance(layer, MTLLoRALinear):
        return layer.merged_weight(task)
    if layer.num_tasks or not layer.can_merge:
        raise ValueError(
            f"Layer {name!r} is an MTLoRA layer with task adapters or mode='addition'; its update "
            "cannot be folded into one weight, so the model has no per-task merged export."
        )
    weight = layer.base_layer.weight
    return weight if layer.merged else weight + layer.get_delta_weight("shared")


@torch.no_grad()
def task_merged_state_dict(module: nn.Module, task: str) -> dict[str, Tensor]:
    """State dict of ``module`` without adapters, with ``task``'s updates folded into the weights.

    The result loads with ``strict=True`` into the same model built without adapters (e.g. a
    ``SwinBackbone`` with ``adapter=None``), which then computes ``module``'s features of ``task``.

    Args:
        module: A model holding MTL-LoRA layers (and optionally shared-only LoRA layers).
        task: Task to export.

    Returns:
        Detached tensors keyed as in the adapter-free model.

    Raises:
        ValueError: If ``module`` holds prompt adapters or MTLoRA task adapters (not mergeable).
        KeyError: If an MTL-LoRA layer has no adapter for ``task``.
    """
    wrappers: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, TaskAdaptiveLowRankPrompt):
            raise ValueError(
                f"Module {name!r} is a prompt adapter: prompts add attention branches, which no "
                "weight can absorb, so the model has no merged export."
            )
        if isinstance(sub, (MTLLoRALinear, MTLoRALinear)):
            wrappers[name] = sub
    out: dict[str, Tensor] = {}
    for key, value in module.state_dict().items():
        prefix, _, _ = key.rpartition(".")
        owner = next((p for p in _owners(prefix) if p in wrappers), None)
        if owner is None:
            out[key] = value.detach().clone()
            continue
        inner = key[len(owner) + 1 :] if owner else key
        if not inner.startswith(_BASE):
            continue  # an adapter tensor
        plain = f"{owner}.{inner[len(_BASE) :]}" if owner else inner[len(_BASE) :]
        if inner == f"{_BASE}weight":
            out[plain] = _plain_weight(wrappers[owner], task, owner).detach().clone()
        else:
            out[plain] = value.detach().clone()
    return out


def _owners(prefix: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b.c", "a.b", "a", ""]``: the modules a key may belong to."""
    parts = prefix.split(".") if prefix else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]
