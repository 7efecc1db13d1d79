"""Turn command-line choices into a runnable mmengine config (for the train and test tools)."""

from __future__ import annotations

import logging
import os.path as osp
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.config import Config, ConfigDict
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mtlora_vision.engine.amp import CPUAutocastOptimWrapper

logger = logging.getLogger(__name__)


def _type_name(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", str(value))


def resolve_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> str:
    """Pick the work dir: command line, else the config's ``work_dir``, else the config name."""
    if work_dir:
        return work_dir
    if cfg.get("work_dir"):
        return cfg.work_dir
    return osp.join("./work_dirs", osp.splitext(osp.basename(config_path))[0])


def resolve_precision(cfg: Config, amp: bool, cuda: bool | None = None) -> None:
    """Choose the optimizer wrapper for the hardware at hand (in place).

    On a GPU, ``--amp`` (or a config that asks for ``AmpOptimWrapper``) trains with fp16 autocast
    and loss scaling. Without a GPU, ``--amp`` means bf16 autocast on the CPU, and a config's fp16
    ``AmpOptimWrapper`` falls back to plain fp32 with a warning, since fp16 autocast needs CUDA.

    Args:
        cfg: Config with an ``optim_wrapper`` entry.
        amp: Whether the user asked for mixed precision.
        cuda: Whether CUDA is usable; detected when None.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    wrapper = cfg.optim_wrapper
    asks_amp = _type_name(wrapper.get("type", "OptimWrapper")) == "AmpOptimWrapper"
    if cuda:
        if amp and not asks_amp:
            wrapper.type = AmpOptimWrapper
            wrapper.setdefault("dtype", "float16")
            wrapper.setdefault("loss_scale", "dynamic")
        return
    if asks_amp or amp:
        for key in ("dtype", "loss_scale", "use_fsdp"):
            wrapper.pop(key, None)
        wrapper.type = CPUAutocastOptimWrapper if amp else OptimWrapper
        how = "bf16 autocast on the CPU" if amp else "fp32 (fp16 AMP needs CUDA; --amp gives bf16)"
        logger.warning("No CUDA device: training in %s.", how)


def resolve_launcher(cfg: Config, launcher: str, cuda: bool | None = None) -> None:
    """Set the launcher and use gloo for distributed runs on machines without CUDA (in place)."""
    cfg.launcher = launcher
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if launcher != "none" and not cuda:
        env_cfg = cfg.setdefault("env_cfg", ConfigDict())
        dist_cfg = env_cfg.setdefault("dist_cfg", ConfigDict())
        dist_cfg["backend"] = "gloo"


def load_config(path: str, cfg_options: Mapping[str, Any] | None = None) -> Config:
    """Load a config file and merge ``--cfg-options``; a missing file is a clear error."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist; see the configs/ folder.")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    return cfg
