"""Fold MTLoRA / LoRA updates into the frozen weights for inference, and take them out again.

MTLoRA (Agiza et al., CVPR 2024). Each wrapped layer computes ``h = W x + b`` once and adds
low-rank terms (see :mod:`mtlora_vision.adapters.mtlora`). What can be merged:

* **Shared updates, always (modes ``matrix`` and ``matrixv2``).** ``W <- W + s B A`` turns the
  shared output into a single matmul. This covers every adapted layer of blocks without task
  branches (qkv, proj, fc1, fc2 of all blocks but the last of each stage, and the MTLoRA+
  patch-merging reduction), so after merging those blocks cost as much as the frozen backbone.
* **Task updates in ``matrix`` mode: no.** The official task output is
  ``y_t = W x + b + s_t B_t A_t u_t``: it uses the *unmerged* ``W`` on the *shared* input ``x``.
  Once the shared update is folded in, a merged layer with task adapters recovers ``W x`` as
  ``W' x - s B A x`` (one extra rank-r pair, the same cost as before merging). For ``fc1`` and
  ``fc2`` the task update reads the task input ``u_t = x_t`` while ``W`` reads ``x``, so
  ``W + s_t B_t A_t`` would apply ``W`` to the wrong input: it cannot be folded. For ``proj``
  (where ``u_t`` is the shared input) one could form a per-task weight copy ``W + s_t B_t A_t``,
  but that trades a rank-``r_t`` matmul for a full ``C x C`` one per task and keeps T weight copies,
  so we do not.
* **Task updates in ``matrixv2`` mode:** the shared term is part of ``y_t``, so merging the shared
  update serves the task outputs too; the task terms stay low-rank for the same reasons.
* **``addition`` mode: nothing.** Its shared output passes the task outputs through a LayerNorm,
  which is not linear.

What stays unmerged costs little at inference: in eval mode the Swin backbone keeps the task
streams as a shared base plus rank-``r_t`` coefficients and merges them into the next stage once
(:mod:`mtlora_vision.models.backbones.task_branch`), so per task only the LayerNorm, the GELU and
the rank-``r_t`` products run at full width. MTL-LoRA layers merge per task instead
(:func:`~mtlora_vision.adapters.mtl_lora_merge.set_merge_at_inference`, or
:func:`~mtlora_vision.adapters.mtl_lora_merge.merge_task` for a one-task
export).

Merging is meant for inference (``model.eval()``): a merged layer applies the shared update without
dropout, and unmerging subtracts the *current* update, so do not train a merged model. The merged
state is not part of the state dict: save checkpoints unmerged. Outputs agree with the unmerged
model up to float32 rounding (relative error about 1e-6).
"""

from __future__ import annotations

import logging

from torch import nn

from mtlora_vision.adapters.inject import adapter_layers
from mtlora_vision.adapters.mtl_lora_merge import set_merge_at_inference

logger = logging.getLogger(__name__)


def merge_adapters(model: nn.Module) -> int:
    """Fold every mergeable shared update of ``model`` into its frozen weights.

    Args:
        model: Any module containing ``MTLoRALinear`` layers.

    Returns:
        Number of layers merged now (already merged or unmergeable layers are skipped).
    """
    count = sum(layer.merge() for layer in adapter_layers(model).values())
    logger.info("Merged the shared updates of %d adapter layers.", count)
    return count


def unmerge_adapters(model: nn.Module) -> int:
    """Take every merged shared update out of the frozen weights again.

    Args:
        model: Any module containing ``MTLoRALinear`` layers.

    Returns:
        Number of layers unmerged.
    """
    count = sum(layer.unmerge() for layer in adapter_layers(model).values())
    logger.info("Unmerged %d adapter layers.", count)
    return count


def merge_for_inference(model: nn.Module) -> int:
    """Make every adapter of ``model`` as cheap at inference as its method allows.

    MTLoRA and LoRA layers fold their shared updates in (:func:`merge_adapters`); MTL-LoRA layers
    switch to their on-the-fly per-task merged path, which runs when autograd is off
    (:func:`~mtlora_vision.adapters.mtl_lora_merge.set_merge_at_inference`). Prompt adapters and
    BitFit have nothing to merge. Undo with :func:`unmerge_adapters` and
    ``set_merge_at_inference(model, False)``.

    Returns:
        Number of layers changed.
    """
    return merge_adapters(model) + set_merge_at_inference(model, True)


def is_merged(model: nn.Module) -> bool:
    """Whether any adapter layer of ``model`` is merged."""
    return any(layer.merged for layer in adapter_layers(model).values())
