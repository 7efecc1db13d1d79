"""Build a model from a config and load a checkpoint strictly, ready for inference.

MTLoRA (Agiza et al., CVPR 2024) models are built from mmengine pure-Python configs, e.g.
``init_model("configs/paper/mtlora_r64_swin-t_pascal.py", "work_dirs/.../epoch_300.pth")``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from torch import Tensor, nn

from mtlora_vision.engine.checkpoint import CONTENT_KEY, trainable_state_dict_keys
from mtlora_vision.engine.runtime import load_config
from mtlora_vision.models.state_dict_check import check_state_dict_fits
from mtlora_vision.safe_load import load_checkpoint_safely

logger = logging.getLogger(__name__)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], bool]:
    """Read a model state dict from an mmengine checkpoint or a plain state-dict file.

    Loading goes through :func:`mtlora_vision.safe_load.load_checkpoint_safely`: the file's
    integrity is checked first, and nothing but tensors and plain data is ever unpickled.
    mmengine checkpoints keep the weights under ``"state_dict"``; the official MTLoRA format
    keeps them under ``"model"`` (convert those with ``tools/convert_official_checkpoint.py``).

    Returns:
        The state dict, and whether it holds only the trainable entries (our trainable-only
        checkpoints; the frozen weights then come from the config's pretrained source).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DamagedCheckpointError: If the file is truncated, altered or not a checkpoint.
        UnsafeCheckpointError: If it holds a type outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    checkpoint = load_checkpoint_safely(path, map_location="cpu")
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"Checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict."
        )
    trainable_only = checkpoint.get("meta", {}).get(CONTENT_KEY) == "trainable"
    state = checkpoint.get("state_dict", checkpoint)
    return {k.removeprefix("module."): v for k, v in state.items()}, trainable_only


def load_model_state(
    model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint"
) -> None:
    """Load ``state`` into ``model`` strictly, with an error that names what differs.

    Raises:
        KeyError: If keys are missing or unexpected (e.g. a checkpoint for other tasks).
        ValueError: If shapes differ (e.g. a checkpoint for other ranks or head sizes).
    """
    check_state_dict_fits(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def init_model(
    config: str | Path | Config,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    cfg_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the model of a config, load an optional checkpoint strictly, switch to eval mode.

    Args:
        config: Config file path or an mmengine ``Config`` with a ``model`` entry.
        checkpoint: Optional checkpoint (mmengine's ``{"state_dict": ...}`` or a plain state
            dict). When given, the backbone's ``pretrained`` weights are not loaded.
        device: Device to put the model on.
        cfg_options: Overrides merged into the config, e.g. ``{"model.backbone.img_size": 512}``.

    Returns:
        The model in eval mode, with the config's trainable policy applied and the config as
        ``model.cfg``.

    Raises:
        FileNotFoundError: If the config or checkpoint file does not exist.
        KeyError: If checkpoint keys differ from the model's (other tasks or adapters).
        ValueError: If checkpoint shapes differ from the model's (other ranks or outputs).
    """
    if isinstance(config, (str, Path)):
        config = load_config(str(config), cfg_options)
    elif isinstance(config, Config):
        config = copy.deepcopy(config)
        if cfg_options:
            config.merge_from_dict(dict(cfg_options))
    else:
        raise TypeError(
            f"config must be a path or an mmengine Config, not {type(config).__name__}."
        )
    if "model" not in config:
        raise KeyError("The config has no 'model' entry.")
    model_cfg = config.model
    state, trainable_only = read_checkpoint(checkpoint) if checkpoint is not None else ({}, False)
    if checkpoint is not None and not trainable_only and "backbone" in model_cfg:
        # A full checkpoint holds the frozen weights too: no need to read the pretrained file.
        model_cfg.backbone.pretrained = None
    model = MODELS.build(model_cfg)
    if checkpoint is not None:
        if trainable_only:
            trainable = trainable_state_dict_keys(model)
            own = model.state_dict()
            state.update({k: v for k, v in own.items() if k not in state and k not in trainable})
        load_model_state(model, state, f"Checkpoint {str(checkpoint)!r}")
    if hasattr(model, "apply_trainable_policy"):
        model.apply_trainable_policy()
    model.cfg = config  # as mmseg's init_model: the test size and data settings travel along
    return model.to(device).eval()
