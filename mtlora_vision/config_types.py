"""Resolve the ``type`` of a config entry: a class, a short alias, or a dotted import path.

Pure-Python mmengine configs hold classes; the copy mmengine dumps into the work dir (and the
``vis_data/config.py`` it logs) holds them as dotted strings such as
``'mtlora_vision.adapters.config.MTLoRAConfig'``. Our builders accept all three forms, so a dumped
config builds the same model as the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmengine.utils import get_object_from_string


def resolve_type(kind: Any, aliases: Mapping[str, Any]) -> Any:
    """Return the object ``kind`` names.

    Args:
        kind: A class (returned as is), a key of ``aliases``, or a dotted import path.
        aliases: Short names accepted by the builder, e.g. ``{"mtlora": MTLoRAConfig}``.

    Returns:
        The class or object, or ``None`` for a string that is neither an alias nor importable
        (the caller raises its own error, listing its aliases).
    """
    if not isinstance(kind, str):
        return kind
    if kind in aliases:
        return aliases[kind]
    if "." in kind:
        return get_object_from_string(kind)
    return None
