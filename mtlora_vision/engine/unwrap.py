"""The model inside mmengine's DDP / FSDP wrappers."""

from __future__ import annotations

from mmengine.model import is_model_wrapper
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return ``model.module`` for an mmengine model wrapper (DDP, FSDP), else ``model``."""
    return model.module if is_model_wrapper(model) else model
