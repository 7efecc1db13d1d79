"""BitFit: train only the bias terms of a pretrained backbone (plus the task heads).

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022. A bias term here is every parameter whose own
name is ``bias``: linear and convolution biases and the LayerNorm shifts. Swin's
``relative_position_bias_table`` is not a bias term and stays frozen. Which parts count as heads is
the caller's choice (``trainable_prefixes``); MTLoRA's BitFit configuration is not published
(MTLoRA issue #8).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

logger = logging.getLogger(__name__)


def is_bitfit_trainable(name: str, trainable_prefixes: Sequence[str] = ()) -> bool:
    """Return whether parameter ``name`` trains under BitFit.

    Args:
        name: Dotted parameter name, e.g. ``"backbone.layers.0.blocks.0.attn.qkv.bias"``.
        trainable_prefixes: Module paths trained in full (e.g. ``("decoder", "heads")``); a name
            matches a prefix equal to it or to one of its leading dotted components.

    Returns:
        True for bias terms and for parameters under a trainable prefix.
    """
    if name.rsplit(".", 1)[-1] == "bias":
        return True
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in trainable_prefixes)


def mark_only_biases_trainable(module: nn.Module, trainable_prefixes: Sequence[str] = ()) -> int:
    """Set ``requires_grad`` of every parameter of ``module`` by :func:`is_bitfit_trainable`.

    Args:
        module: Model whose parameter names are matched.
        trainable_prefixes: Module paths trained in full, relative to ``module``.

    Returns:
        The number of trainable scalars afterwards.
    """
    trainable = 0
    for name, param in module.named_parameters():
        param.requires_grad_(is_bitfit_trainable(name, trainable_prefixes))
        trainable += param.numel() if param.requires_grad else 0
    logger.info("BitFit: %d trainable parameters.", trainable)
    return trainable
