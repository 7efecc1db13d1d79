"""Convert an official MTLoRA release checkpoint to this package's layout.

    python tools/convert_official_checkpoint.py mtlora_official.pth work_dirs/mtlora_r64.pth
    python tools/convert_official_checkpoint.py IN OUT \
        --check configs/paper/mtlora_r64_swin-t_pascal.py

The official file is ``{"model": {...}, ...}`` laid out as in the reference key list (MultiTaskSwin:
``backbone.*`` with ``<layer>.linear.*`` and ``lora_shared_A``/``lora_tasks_A.<task>``, patch
merging at the END of stage i, ``downsampler.<task>.downsample_k``,
``decoders.decoders.<task>.last_layer.{0,1,3}``). The output is ``{"state_dict": {...}, "meta":
{...}}`` as mmengine saves it, loadable by ``mtlora_vision.apis.inference.init_model`` strictly.
Recomputed buffers (``attn_mask``, ``relative_position_index``) are dropped; any key that no rule
covers is an error.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool

if TYPE_CHECKING:  # torch is imported where it is used: --help answers without it
    from torch import Tensor

logger = logging.getLogger(__name__)

#: Official buffers that our model recomputes.
DROPPED = re.compile(r".*\.(attn_mask|relative_position_index)$")

#: (official pattern, our replacement), applied in order to every key (after the stage shift).
RULES: tuple[tuple[str, str], ...] = (
    (r"\.linear\.(weight|bias)$", r".base_layer.\1"),
    (r"\.lora_shared_A$", ".lora_shared_a"),
    (r"\.lora_shared_B$", ".lora_shared_b"),
    (r"\.lora_tasks_A\.", ".lora_tasks_a."),
    (r"\.lora_tasks_B\.", ".lora_tasks_b."),
    (r"^downsampler\.(\w+)\.downsample_(\d+)\.", r"fusion.\1.convs.\2."),
    (r"^decoders\.decoders\.(\w+)\.last_layer\.0\.", r"heads.\1.conv."),
    (r"^decoders\.decoders\.(\w+)\.last_layer\.1\.", r"heads.\1.norm."),
    (r"^decoders\.decoders\.(\w+)\.last_layer\.3\.", r"heads.\1.classifier."),
)

#: Inverse rules (ours -> official), for tests and for exporting.
INVERSE_RULES: tuple[tuple[str, str], ...] = (
    (r"\.base_layer\.(weight|bias)$", r".linear.\1"),
    (r"\.lora_shared_a$", ".lora_shared_A"),
    (r"\.lora_shared_b$", ".lora_shared_B"),
    (r"\.lora_tasks_a\.", ".lora_tasks_A."),
    (r"\.lora_tasks_b\.", ".lora_tasks_B."),
    (r"^fusion\.(\w+)\.convs\.(\d+)\.", r"downsampler.\1.downsample_\2."),
    (r"^heads\.(\w+)\.conv\.", r"decoders.decoders.\1.last_layer.0."),
    (r"^heads\.(\w+)\.norm\.", r"decoders.decoders.\1.last_layer.1."),
    (r"^heads\.(\w+)\.classifier\.", r"decoders.decoders.\1.last_layer.3."),
)

_KNOWN_OURS = re.compile(r"^(backbone\.(patch_embed|layers)\.|fusion\.|heads\.)")


def _apply(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def official_to_ours_key(key: str) -> str | None:
    """Our key for an official key, or None for a dropped buffer (pure)."""
    if DROPPED.match(key):
        return None
    if key.startswith("backbone."):
        from mtlora_vision.models.backbones.swin_checkpoint import official_to_timm_key

        key = "backbone." + official_to_timm_key(key.removeprefix("backbone."))
    return _apply(key, RULES)


def ours_to_official_key(key: str) -> str:
    """The official key for one of ours (pure inverse of :func:`official_to_ours_key`)."""
    key = _apply(key, INVERSE_RULES)
    if key.startswith("backbone."):
        from mtlora_vision.models.backbones.swin_checkpoint import timm_to_official_key

        key = "backbone." + timm_to_official_key(key.removeprefix("backbone."))
    return key


def convert_state_dict(official: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an official MTLoRA state dict (the ``"model"`` entry) to ours.

    Raises:
        KeyError: Listing every key that maps to nothing we know.
    """
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in official.items():
        new_key = official_to_ours_key(key)
        if new_key is None:
            continue
        if not _KNOWN_OURS.match(new_key):
            unknown.append(key)
            continue
        out[new_key] = value
    if unknown:
        raise KeyError(f"Keys the converter does not know (not an MTLoRA checkpoint?): {unknown}.")
    return out


def to_official_state_dict(ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict in the official layout (without the recomputed buffers)."""
    return {ours_to_official_key(k): v for k, v in ours.items()}


def load_official(path: str | Path) -> dict[str, Tensor]:
    """Read the ``"model"`` entry of an official checkpoint file, running no code from it.

    The release also holds ``optimizer``, ``lr_scheduler``, ``scaler``, ``epoch`` and its yacs
    ``config``; :func:`~mtlora_vision.safe_load.load_checkpoint_safely` reads the config as an
    inert stand-in (yacs need not be installed) and refuses any other Python object.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DamagedCheckpointError: If the file is truncated or altered.
        UnsafeCheckpointError: If the file holds a type outside the allow-list.
        KeyError: If the file has no ``"model"`` entry.
    """
    from mtlora_vision.safe_load import load_checkpoint_safely

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Official checkpoint {str(path)!r} does not exist.")
    checkpoint = load_checkpoint_safely(path, map_location="cpu")
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise KeyError(f"{str(path)!r} has no 'model' entry; keys: {keys}.")
    return dict(checkpoint["model"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description="Convert an official MTLoRA checkpoint."
    )
    parser.add_argument("src", help="official checkpoint ({'model': ...})")
    parser.add_argument("dst", help="output file ({'state_dict': ...})")
    parser.add_argument("--check", metavar="CONFIG", help="load the result strictly into CONFIG")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from mtlora_vision.engine.checkpoint import save_checkpoint_file

    state = convert_state_dict(load_official(args.src))
    save_checkpoint_file({"state_dict": state, "meta": {"converted_from": str(args.src)}}, args.dst)
    print(f"Wrote {len(state)} tensors to {args.dst}")
    if args.check:
        from mtlora_vision.apis.inference import init_model

        init_model(args.check, args.dst)
        print(f"{args.dst} loads strictly into {args.check}")


if __name__ == "__main__":
    run_tool(main)
