"""Build a task head from its config entry (``dict(type=HRNetHead, ...)``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from mtlora_vision.config_types import resolve_type
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.heads.mlp import MLPHead

#: Head types selectable by name in configs (classes work too).
HEAD_TYPES: Mapping[str, type[nn.Module]] = {"HRNetHead": HRNetHead, "MLPHead": MLPHead}


def build_head(cfg: Mapping[str, Any], in_channels: Sequence[int], num_outputs: int) -> nn.Module:
    """Instantiate a head.

    Args:
        cfg: ``type`` (a head class or a name in :data:`HEAD_TYPES`) plus the head's own options.
        in_channels: Channels of the fused features per scale.
        num_outputs: Output channels of the task.

    Returns:
        The head module.

    Raises:
        ValueError: For an unknown head type.
    """
    options = dict(cfg)
    kind = options.pop("type", HRNetHead)
    cls = resolve_type(kind, HEAD_TYPES)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"Unknown head type {kind!r}; use a class or one of {sorted(HEAD_TYPES)}.")
    return cls(in_channels=tuple(in_channels), num_outputs=num_outputs, **options)
