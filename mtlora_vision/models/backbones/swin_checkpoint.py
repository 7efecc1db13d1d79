"""Pure functions that map Swin checkpoints (Microsoft, timm, official MTLoRA) onto our backbone.

Swin Transformer (Liu et al., ICCV 2021). Our backbone uses timm's layout: the patch merging that
ends official stage ``i`` lives at the *start* of stage ``i + 1`` (``layers.{i+1}.downsample``).
Microsoft's ``swin_{tiny,small,base}_patch4_window7_224.pth`` (a dict with ``"model"``) and the
MTLoRA release keep it at the end (``layers.{i}.downsample``); timm checkpoints already match.
The relative-position index and attention masks are recomputed buffers, and the classifier
(``head.*``) and final norm (``norm.*``) do not exist in a dense-prediction backbone: those keys are
dropped on purpose and reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from torch import Tensor

from mtlora_vision.safe_load import load_checkpoint_safely

#: Keys dropped on purpose when loading an ImageNet Swin checkpoint, by pattern.
DROPPED_PATTERNS: tuple[str, ...] = (
    r"head\..*",
    r"norm\..*",
    r".*attn_mask",
    r".*relative_position_index",
)

_OFFICIAL_DOWNSAMPLE = re.compile(r"^(.*?layers\.)(\d+)(\.downsample\..*)$")


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a checkpoint from a local file (``.pth``/``.pt``/``.bin`` or ``.safetensors``).

    Goes through :func:`mtlora_vision.safe_load.load_checkpoint_safely`: integrity checked, no
    code from the file is run.

    Raises:
        FileNotFoundError: If ``path`` does not exist (nothing is ever downloaded).
        DamagedCheckpointError: If the file is damaged.
        UnsafeCheckpointError: If it holds a type outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint {str(path)!r} does not exist; download it yourself and pass a local path."
        )
    return load_checkpoint_safely(path, map_location="cpu")


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, Tensor]:
    """Return the state dict in a checkpoint (``"model"``, ``"state_dict"`` or the dict itself)."""
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return dict(checkpoint[key])
    return dict(checkpoint)


def is_official_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether patch merging ends each stage (the official layout has ``layers.0.downsample``)."""
    return any(re.search(r"(^|\.)layers\.0\.downsample\.", k) for k in state_dict)


def official_to_timm_key(key: str) -> str:
    """Move a ``layers.{i}.downsample`` key to ``layers.{i+1}.downsample``; other keys are kept."""
    match = _OFFICIAL_DOWNSAMPLE.match(key)
    if match is None:
        return key
    return f"{match.group(1)}{int(match.group(2)) + 1}{match.group(3)}"


def timm_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_timm_key`."""
    match = _OFFICIAL_DOWNSAMPLE.match(key)
    if match is None:
        return key
    return f"{match.group(1)}{int(match.group(2)) - 1}{match.group(3)}"


def wrap_adapted_key(key: str, wrapped: frozenset[str] | set[str]) -> str:
    """Send ``<module>.weight``/``.bias`` of a wrapped module to ``<module>.base_layer.*``."""
    module, _, leaf = key.rpartition(".")
    if module in wrapped and leaf in ("weight", "bias"):
        return f"{module}.base_layer.{leaf}"
    return key


def is_dropped_key(key: str) -> bool:
    """Whether ``key`` is one of the keys dropped on purpose (:data:`DROPPED_PATTERNS`)."""
    return any(re.fullmatch(p, key) for p in DROPPED_PATTERNS)


def filter_swin_checkpoint(
    state_dict: Mapping[str, Tensor], wrapped_modules: Iterable[str] = ()
) -> tuple[dict[str, Tensor], list[str]]:
    """Map an ImageNet Swin state dict onto our backbone's keys.

    Args:
        state_dict: Microsoft (official layout) or timm Swin state dict, or a checkpoint holding
            one under ``"model"``/``"state_dict"``.
        wrapped_modules: Names of backbone modules wrapped by adapter layers.

    Returns:
        The mapped state dict and the sorted list of dropped keys.
    """
    state_dict = unwrap_state_dict(state_dict)
    official = is_official_layout(state_dict)
    wrapped = frozenset(wrapped_modules)
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if is_dropped_key(key):
            dropped.append(key)
            continue
        new_key = official_to_timm_key(key) if official else key
        out[wrap_adapted_key(new_key, wrapped)] = value
    return out, sorted(dropped)
