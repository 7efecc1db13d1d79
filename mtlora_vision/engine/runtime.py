"""Turn command-line choices into a runnable mmengine config (for the train and test tools)."""

from __future__ import annotations

import logging
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.config import Config, ConfigDict

from mtlora_vision.engine.config_check import check_cfg_options, check_hook_args
from mtlora_vision.engine.resume import (
    CheckpointProgress,
    checkpoint_progress,
    latest_checkpoint,
    training_finished,
)
from mtlora_vision.errors import ConfigError

logger = logging.getLogger(__name__)


def _type_name(value: Any) -> str:
    """Class name of a config ``type``: a class, a registry name or a dotted path."""
    name = value if isinstance(value, str) else getattr(value, "__name__", str(value))
    return name.rsplit(".", 1)[-1]


def resolve_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> str:
    """Pick the work dir: command line, else the config's ``work_dir``, else the config name."""
    if work_dir:
        return work_dir
    if cfg.get("work_dir"):
        return cfg.work_dir
    return osp.join("./work_dirs", osp.splitext(osp.basename(config_path))[0])


def resolve_resume(cfg: Config, resume: str | None) -> CheckpointProgress | None:
    """Set ``cfg.resume`` and ``cfg.load_from`` from ``--resume [CKPT]`` (in place).

    A config with ``resume=True`` and no ``load_from`` counts as ``--resume``: mmengine's own
    lookup would trust ``last_checkpoint`` blindly.

    Args:
        cfg: Config with its final ``work_dir``.
        resume: None (no resume), ``"auto"`` (the work dir's most advanced complete checkpoint,
            see :func:`mtlora_vision.engine.resume.latest_checkpoint`) or a path.

    Returns:
        The checkpoint to continue from and its progress, or None for a fresh start.

    Raises:
        FileNotFoundError: If the given checkpoint does not exist.
        DamagedCheckpointError: If the given checkpoint (or every one found) is damaged.
    """
    if resume is None:
        if not (cfg.get("resume") and not cfg.get("load_from")):
            return None
        resume = "auto"
    if resume == "auto":
        point = latest_checkpoint(cfg.work_dir)
        if point is None:
            logger.warning(
                "--resume: no checkpoint in %s yet; training from the start.", cfg.work_dir
            )
            cfg.resume, cfg.load_from = False, None
            return None
    else:
        path = osp.expanduser(resume)
        if not osp.isfile(path):
            raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint file.")
        point = checkpoint_progress(path)
    logger.info(
        "--resume: latest complete checkpoint %s (epoch %d, iteration %d).",
        point.path,
        point.epoch,
        point.iter,
    )
    cfg.resume, cfg.load_from = True, point.path
    return point


def finished_run_message(cfg: Config, point: CheckpointProgress | None) -> str | None:
    """A message if resuming ``point`` would train nothing (end of ``train_cfg``), else None."""
    if point is None or not training_finished(cfg.get("train_cfg") or {}, point):
        return None
    return (
        f"Nothing to train: {point.path} is at epoch {point.epoch}, iteration {point.iter}, the "
        "end of train_cfg; the run is finished and no file was changed. To train longer, raise "
        "train_cfg.max_epochs (or max_iters); to evaluate, use tools/test.py."
    )


def resolve_cpu_threads(cfg: Config, cuda: bool | None = None) -> int | None:
    """Apply the config's ``cpu_threads`` (torch intra-op threads) on machines without CUDA.

    On a CPU that other processes share, more threads than free cores make small models many
    times slower (OpenMP threads spin waiting for each other): the demo measured 0.41 s per
    iteration with 1 thread and 1.8 s with 2 on a 2-core machine at load 3. An explicit
    ``OMP_NUM_THREADS`` in the environment wins over the config.

    Args:
        cfg: Config, optionally with a top-level ``cpu_threads`` (int >= 1).
        cuda: Whether CUDA is usable; detected when None.

    Returns:
        The number of threads set, or None when nothing was changed.

    Raises:
        ValueError: If ``cpu_threads`` is not a positive integer.
    """
    threads = cfg.get("cpu_threads")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if threads is None or cuda or "OMP_NUM_THREADS" in os.environ:
        return None
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"cpu_threads must be a positive integer, got {threads!r} in the config.")
    torch.set_num_threads(threads)
    logger.info("CPU run: %d torch thread(s) (config cpu_threads).", threads)
    return threads


def resolve_launcher(cfg: Config, launcher: str, cuda: bool | None = None) -> None:
    """Set the launcher and the DDP wrapper; on machines without CUDA, run DDP on gloo (in place).

    MTLoRA's last block has a shared adapter whose output feeds no decoder (decoders read the task
    features), so DDP must look for unused parameters. mmengine's own initialisation calls
    ``torch.cuda.set_device`` and gives DDP a device id, both wrong without CUDA: there the process
    group is started here (gloo) and DDP gets ``device_ids=None``.
    """
    cfg.launcher = launcher
    if launcher == "none":
        return
    cuda = torch.cuda.is_available() if cuda is None else cuda
    wrapper = cfg.get("model_wrapper_cfg") or ConfigDict(type="MMDistributedDataParallel")
    wrapper.setdefault("find_unused_parameters", True)
    if not cuda:
        wrapper["device_ids"] = None
        env_cfg = cfg.setdefault("env_cfg", ConfigDict())
        dist_cfg = env_cfg.setdefault("dist_cfg", ConfigDict())
        dist_cfg["backend"] = "gloo"
    cfg.model_wrapper_cfg = wrapper


def init_cpu_distributed(launcher: str) -> None:
    """Start a gloo process group for ``--launcher pytorch`` on a machine without CUDA."""
    if launcher != "pytorch" or torch.cuda.is_available() or torch.distributed.is_initialized():
        return
    torch.distributed.init_process_group(backend="gloo")


def shutdown_distributed() -> None:
    """Destroy the process group before exit (gloo aborts the process at exit otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def resolve_randomness(cfg: Config, seed: int | None, deterministic: bool) -> None:
    """Apply ``--seed`` and ``--deterministic`` to ``cfg.randomness`` (in place).

    Args:
        cfg: Config.
        seed: The run's seed, 0 <= seed < 2**32 (numpy's limit), or None to keep the config's.
        deterministic: Ask for deterministic algorithms (cuDNN deterministic, no benchmark,
            ``torch.use_deterministic_algorithms``); on CUDA this needs
            ``CUBLAS_WORKSPACE_CONFIG``, set here unless the environment has it.

    Raises:
        ValueError: If ``seed`` is out of range.
    """
    randomness = cfg.get("randomness") or ConfigDict()
    if seed is not None:
        if not 0 <= seed < 2**32:
            raise ConfigError(f"--seed must be in [0, 2**32), got {seed}.")
        randomness["seed"] = seed
    if deterministic:
        randomness["deterministic"] = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cfg.randomness = randomness


def load_config(path: str, cfg_options: Mapping[str, Any] | None = None) -> Config:
    """Load a config file and merge ``--cfg-options``, refusing keys nothing would read.

    A missing file, an unknown or misspelt ``--cfg-options`` key and an unknown hook argument are
    errors here, before anything is built (:mod:`mtlora_vision.engine.config_check`).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist; see the configs/ folder.")
    cfg = Config.fromfile(path)
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(dict(cfg_options))
    check_hook_args(cfg)
    return cfg


def checkpointing_requested(cfg: Config) -> bool:
    """Whether the config's backbone checkpoints activations (``grad_checkpointing``) anywhere.

    The setting is one switch or one per stage.
    """
    backbone = (cfg.get("model") or {}).get("backbone") or {}
    setting = backbone.get("grad_checkpointing", False)
    if isinstance(setting, (list, tuple)):
        return any(bool(s) for s in setting)
    return bool(setting)
