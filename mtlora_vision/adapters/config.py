"""Adapter configs for MTLoRA (Agiza et al., CVPR 2024) and plain LoRA (Hu et al., ICLR 2022).

Configs are frozen dataclasses, validated in ``__post_init__``. Values that differ per stage of a
hierarchical backbone (ranks, scales, dropout) accept a scalar or one value per stage and are stored
as tuples of length ``num_stages``. A model-level config turns into one :class:`AdapterSpec` per
wrapped layer (``stage_spec``); the layers themselves only ever see an ``AdapterSpec``.

The module knows nothing about Swin: which layers get task-specific adapters is the backbone's
choice, named here only by the leaf names in ``target_modules`` and ``task_modules``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from mtlora_vision.adapters.checks import check_int
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig, TALoRAPromptConfig
from mtlora_vision.config_types import resolve_type

#: How the task outputs of an MTLoRA layer relate to its shared output (docs/model.md#mtlora-layer).
MODES: tuple[str, ...] = ("matrix", "matrixv2", "addition")

PerStage: TypeAlias = int | float | Sequence[int] | Sequence[float]


def per_stage(value: PerStage, num_stages: int, name: str) -> tuple[Any, ...]:
    """Broadcast a scalar, or check a per-stage sequence, to a tuple of ``num_stages`` values.

    Args:
        value: A scalar, or a sequence of length 1 or ``num_stages``.
        num_stages: Number of backbone stages.
        name: Field name, for the error message.

    Returns:
        One value per stage.

    Raises:
        ValueError: If a sequence has another length.
    """
    if isinstance(value, (int, float)):
        return (value,) * num_stages
    values = tuple(value)
    if len(values) == 1:
        return values * num_stages
    if len(values) != num_stages:
        raise ValueError(
            f"{name}={list(values)} has {len(values)} entries; give one value or {num_stages}."
        )
    return values


def _check_ranks(ranks: Sequence[int], name: str) -> None:
    for rank in ranks:
        check_int(name, rank, shown=list(ranks))


def _check_scales(scales: Sequence[float], name: str) -> None:
    for scale in scales:
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"{name} must be finite numbers, got {name}={list(scales)}.")


def _check_dropouts(dropouts: Sequence[float]) -> None:
    for p in dropouts:
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got dropout={list(dropouts)}.")


@dataclass(frozen=True)
class AdapterSpec:
    """Settings of one wrapped linear layer.

    Attributes:
        shared_rank: Rank of the task-agnostic (shared) update.
        shared_scale: Factor on the shared update, used as given (not divided by the rank).
        dropout: Dropout on the layer input of the low-rank branches (not on task inputs).
        tasks: Task names with a task-specific update; empty for a plain LoRA layer.
        task_rank: Rank of every task-specific update (ignored without tasks).
        task_scale: Factor on the task-specific updates.
        mode: ``"matrix"``, ``"matrixv2"`` or ``"addition"`` (:mod:`~.mtlora`).
        trainable_scale: Make the scales trainable parameters.
    """

    shared_rank: int
    shared_scale: float = 1.0
    dropout: float = 0.0
    tasks: tuple[str, ...] = ()
    task_rank: int = 1
    task_scale: float = 1.0
    mode: str = "matrix"
    trainable_scale: bool = False

    def __post_init__(self) -> None:
        _check_ranks([self.shared_rank], "shared_rank")
        _check_scales([self.shared_scale, self.task_scale], "scales")
        _check_dropouts([self.dropout])
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.tasks:
            _check_ranks([self.task_rank], "task_rank")
            if len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"Duplicate task names in tasks={list(self.tasks)}.")
            bad = [t for t in self.tasks if not t or "." in t]
            if bad:
                raise ValueError(f"Task names {bad} must be non-empty and contain no '.'.")
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode={self.mode!r}; choose one of {list(MODES)}.")
        if self.mode == "addition" and not self.tasks:
            raise ValueError(
                "mode='addition' needs task adapters; use mode='matrix' without tasks."
            )


@dataclass(frozen=True)
class MTLoRAConfig:
    """MTLoRA: shared low-rank updates everywhere, task-specific ones where the backbone branches.

    Defaults are the paper's r64 setting (``docs/model.md#defaults``); scalars are broadcast to all
    stages.

    Attributes:
        shared_rank: Shared (task-agnostic) rank per stage.
        task_rank: Task-specific rank per stage (the same for every task of a stage).
        shared_scale: Shared scale per stage, used as given (not divided by the rank).
        task_scale: Task scale per stage.
        dropout: Adapter input dropout per stage.
        mode: ``"matrix"`` (official), ``"matrixv2"`` or ``"addition"``.
        target_modules: Leaf names of the linear layers that get a shared adapter in every block.
        task_modules: Leaf names that also get task adapters where the backbone branches per task.
        adapt_downsample: MTLoRA+: a shared adapter on the patch-merging reduction, which is frozen.
        trainable_scale: Make the scales trainable.
        num_stages: Number of backbone stages the per-stage values refer to.
    """

    shared_rank: int | Sequence[int] = 64
    task_rank: int | Sequence[int] = 4
    shared_scale: float | Sequence[float] = 4.0
    task_scale: float | Sequence[float] = 4.0
    dropout: float | Sequence[float] = 0.05
    mode: str = "matrix"
    target_modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    task_modules: tuple[str, ...] = ("proj", "fc1", "fc2")
    adapt_downsample: bool = False
    trainable_scale: bool = False
    num_stages: int = field(default=4)

    def __post_init__(self) -> None:
        check_int("num_stages", self.num_stages)
        for name in ("shared_rank", "task_rank", "shared_scale", "task_scale", "dropout"):
            object.__setattr__(self, name, per_stage(getattr(self, name), self.num_stages, name))
        _check_ranks(self.shared_rank, "shared_rank")
        _check_ranks(self.task_rank, "task_rank")
        _check_scales(self.shared_scale, "shared_scale")
        _check_scales(self.task_scale, "task_scale")
        _check_dropouts(self.dropout)
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode={self.mode!r}; choose one of {list(MODES)}.")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "task_modules", tuple(self.task_modules))
        if not self.target_modules:
            raise ValueError("target_modules is empty; name at least one linear layer.")
        missing = [m for m in self.task_modules if m not in self.target_modules]
        if missing:
            raise ValueError(
                f"task_modules {missing} are not in target_modules={list(self.target_modules)}; "
                "every layer with task adapters also has the shared one."
            )

    @property
    def has_tasks(self) -> bool:
        """Whether this config adds task-specific adapters."""
        return bool(self.task_modules)

    def stage_spec(self, stage: int, tasks: Sequence[str] = ()) -> AdapterSpec:
        """Return the layer settings for ``stage``; ``tasks`` empty gives a shared-only layer."""
        # Layers without task adapters cannot sum task outputs, so 'addition' falls back to the
        # official behaviour for them: a plain shared update ('matrix').
        mode = self.mode if tasks else "matrix"
        return AdapterSpec(
            shared_rank=self.shared_rank[stage],
            shared_scale=float(self.shared_scale[stage]),
            dropout=float(self.dropout[stage]),
            tasks=tuple(tasks),
            task_rank=self.task_rank[stage],
            task_scale=float(self.task_scale[stage]),
            mode=mode,
            trainable_scale=self.trainable_scale,
        )


@dataclass(frozen=True)
class LoRAConfig:
    """Plain LoRA: one shared low-rank update per targeted layer, no task-specific ones.

    Attributes:
        rank: Rank per stage.
        scale: Scale per stage, used as given.
        dropout: Adapter input dropout per stage.
        target_modules: Leaf names of the linear layers to adapt.
        adapt_downsample: Also adapt (and freeze) the patch-merging reduction.
        trainable_scale: Make the scales trainable.
        num_stages: Number of backbone stages.
    """

    rank: int | Sequence[int] = 8
    scale: float | Sequence[float] = 1.0
    dropout: float | Sequence[float] = 0.0
    target_modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    adapt_downsample: bool = False
    trainable_scale: bool = False
    num_stages: int = 4

    def __post_init__(self) -> None:
        check_int("num_stages", self.num_stages)
        for name in ("rank", "scale", "dropout"):
            object.__setattr__(self, name, per_stage(getattr(self, name), self.num_stages, name))
        _check_ranks(self.rank, "rank")
        _check_scales(self.scale, "scale")
        _check_dropouts(self.dropout)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise ValueError("target_modules is empty; name at least one linear layer.")

    @property
    def has_tasks(self) -> bool:
        """Plain LoRA never has task-specific adapters."""
        return False

    @property
    def task_modules(self) -> tuple[str, ...]:
        """No layer gets task adapters."""
        return ()

    def stage_spec(self, stage: int, tasks: Sequence[str] = ()) -> AdapterSpec:
        """Return the shared-only layer settings for ``stage`` (``tasks`` must be empty)."""
        if tasks:
            raise ValueError(f"LoRAConfig has no task adapters; got tasks={list(tasks)}.")
        return AdapterSpec(
            shared_rank=self.rank[stage],
            shared_scale=float(self.scale[stage]),
            dropout=float(self.dropout[stage]),
            trainable_scale=self.trainable_scale,
        )


AdapterConfig: TypeAlias = MTLoRAConfig | LoRAConfig | MTLLoRAConfig | TALoRAPromptConfig

#: Names accepted as ``type`` in a config dict, besides the classes themselves.
ADAPTER_TYPES: Mapping[str, type] = {
    "mtlora": MTLoRAConfig,
    "MTLoRAConfig": MTLoRAConfig,
    "lora": LoRAConfig,
    "LoRAConfig": LoRAConfig,
    "mtl_lora": MTLLoRAConfig,
    "MTLLoRAConfig": MTLLoRAConfig,
    "ta_lora_prompt": TALoRAPromptConfig,
    "TALoRAPromptConfig": TALoRAPromptConfig,
}

_CONFIG_CLASSES: tuple[type, ...] = (MTLoRAConfig, LoRAConfig, MTLLoRAConfig, TALoRAPromptConfig)


def build_adapter_config(
    cfg: AdapterConfig | Mapping[str, Any] | None, num_stages: int = 4
) -> AdapterConfig | None:
    """Turn a config entry into an adapter config.

    Args:
        cfg: None (no adapters), a config object, or a mapping with ``type`` (a class above or one
            of ``"mtlora"``, ``"lora"``, ``"mtl_lora"``, ``"ta_lora_prompt"``; default
            ``"mtlora"``) and the class's fields.
        num_stages: Number of stages of the backbone, used when the mapping does not set it.

    Returns:
        The config object, or None.

    Raises:
        ValueError: For an unknown ``type``.
        TypeError: For unknown fields.
    """
    if cfg is None or isinstance(cfg, _CONFIG_CLASSES):
        return cfg
    fields = dict(cfg)
    kind = fields.pop("type", "mtlora")
    cls = resolve_type(kind, ADAPTER_TYPES)
    if cls not in _CONFIG_CLASSES:
        raise ValueError(
            f"Unknown adapter type {kind!r}; use one of {sorted(ADAPTER_TYPES)} or the classes."
        )
    fields.setdefault("num_stages", num_stages)
    for key in ("target_modules", "task_modules"):
        if key in fields:
            fields[key] = tuple(fields[key])
    try:
        return cls(**fields)
    except TypeError as err:
        raise TypeError(f"Bad fields for {cls.__name__}: {sorted(fields)} ({err}).") from err
