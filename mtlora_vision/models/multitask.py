"""Multi-task dense prediction model: Swin backbone with MTLoRA, per-task fusion and heads.

MTLoRA: Low-Rank Adaptation Approach for Efficient Multi-Task Learning (Agiza et al., CVPR 2024).
The backbone returns per-task features of four stages (``docs/model.md#stage-outputs``); each task
reduces them with its own fusion convolutions and predicts with its own head at the finest scale;
outputs are
upsampled bilinearly to the input size (``docs/model.md#decoder``).

Input sizes: any ``H, W`` that are multiples of 32, not only the construction size; see
:mod:`mtlora_vision.models.backbones.swin_blocks` for what happens to windows, shifts, padding and
masks at other sizes. Other sizes are refused with a ValueError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor, nn

from mtlora_vision.adapters.config import AdapterConfig, build_adapter_config
from mtlora_vision.config_types import resolve_type
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.backbones.swin_trainable import TrainablePolicy
from mtlora_vision.models.heads.builder import build_head
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.loss_weighting import (
    DynamicWeightAverage,
    FixedWeighting,
    LossWeighting,
    UncertaintyWeighting,
)
from mtlora_vision.models.losses import MultiTaskLoss, stack_targets
from mtlora_vision.models.necks.fusion import MultiScaleFusion
from mtlora_vision.models.postprocess import postprocess_outputs
from mtlora_vision.recompute import lean_activations
from mtlora_vision.tasks import NUM_OUTPUTS, Task, check_tasks

logger = logging.getLogger(__name__)

#: Backbone types selectable by name in configs (the class works too).
BACKBONE_TYPES: Mapping[str, type[nn.Module]] = {"SwinBackbone": SwinBackbone}

#: Loss-balancing schemes selectable by name in configs (the class works too).
WEIGHTING_TYPES: Mapping[str, type[LossWeighting]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
}

#: The paper's per-stage fusion widths.
DEFAULT_FUSION_CHANNELS: tuple[int, ...] = (18, 36, 72, 144)


def resolve_num_outputs(
    tasks: Sequence[str], num_outputs: Mapping[str, int] | None, dataset: str
) -> dict[str, int]:
    """Output channels per task: ``num_outputs`` first, else the dataset's defaults.

    Raises:
        KeyError: For an unknown dataset, a task without a default, or entries for other tasks.
    """
    given = dict(num_outputs or {})
    extra = sorted(set(given) - set(tasks))
    if extra:
        raise KeyError(
            f"num_outputs names tasks {extra} that the model does not have ({list(tasks)})."
        )
    if dataset not in NUM_OUTPUTS:
        raise KeyError(f"Unknown dataset {dataset!r}; choose from {sorted(NUM_OUTPUTS)}.")
    defaults = NUM_OUTPUTS[dataset]
    missing = [t for t in tasks if t not in given and t not in defaults]
    if missing:
        raise KeyError(
            f"No default number of outputs for {missing} on {dataset!r}; set num_outputs."
        )
    out = {t: int(given.get(t, defaults.get(t, 0))) for t in tasks}
    bad = {t: k for t, k in out.items() if k < 1}
    if bad:
        raise ValueError(f"num_outputs must be >= 1, got {bad}.")
    return out


def resolve_head_cfgs(tasks: Sequence[str], heads: Mapping[str, Any] | None) -> dict[str, dict]:
    """Head config per task: the task's own entry, else ``heads['default']``, else ``HRNetHead``.

    Raises:
        KeyError: For entries that are neither ``'default'`` nor a task of the model.
    """
    heads = dict(heads or {})
    unknown = sorted(set(heads) - set(tasks) - {"default"})
    if unknown:
        raise KeyError(
            f"heads has entries {unknown}; use 'default' or tasks of the model {list(tasks)}."
        )
    default = dict(heads.get("default", {"type": HRNetHead}))
    return {t: dict(heads.get(t, default)) for t in tasks}


def build_backbone(
    cfg: Mapping[str, Any], tasks: Sequence[str], adapter: AdapterConfig | None
) -> SwinBackbone:
    """Build the backbone from its config entry, giving it the model's tasks and adapters."""
    options = dict(cfg)
    kind = options.pop("type", SwinBackbone)
    cls = resolve_type(kind, BACKBONE_TYPES)
    if cls is not SwinBackbone:
        raise ValueError(f"Unknown backbone type {kind!r}; supported: {sorted(BACKBONE_TYPES)}.")
    for key in ("tasks", "adapter"):
        if key in options:
            raise KeyError(f"Set {key!r} on the model, not in the backbone config.")
    return cls(**options, tasks=tuple(tasks), adapter=adapter)


def build_losses(
    tasks: Sequence[str], cfg: Mapping[str, Any] | None
) -> tuple[MultiTaskLoss, LossWeighting]:
    """Build the per-task losses and the balancing scheme from the model's ``losses`` entry.

    ``cfg`` holds ``weighting`` (``dict(type=FixedWeighting | 'fixed' | 'uncertainty' | 'dwa',
    ...)``; default: fixed official weights), ``edge_pos_weight`` and ``functions`` (per-task loss
    replacements); see :class:`~mtlora_vision.models.losses.MultiTaskLoss`.
    """
    options = dict(cfg or {})
    unknown = sorted(set(options) - {"weighting", "edge_pos_weight", "functions"})
    if unknown:
        raise KeyError(
            f"Unknown losses options {unknown}; use weighting, edge_pos_weight, functions."
        )
    criterion = MultiTaskLoss(
        tasks,
        edge_pos_weight=options.get("edge_pos_weight", 0.95),
        functions=options.get("functions"),
    )
    weighting_cfg = dict(options.get("weighting") or {"type": FixedWeighting})
    kind = weighting_cfg.pop("type", FixedWeighting)
    cls = resolve_type(kind, WEIGHTING_TYPES)
    if cls is None:
        raise ValueError(f"Unknown loss weighting {kind!r}; choose from {sorted(WEIGHTING_TYPES)}.")
    return criterion, cls(tasks=tuple(tasks), **weighting_cfg)


class MultiTaskModel(BaseModel):
    """Shared backbone, per-task fusion and heads; mmengine model with three forward modes.

    Args:
        tasks: Task names (values of :class:`mtlora_vision.tasks.Task`), in output order.
        backbone: Backbone config, ``dict(type=SwinBackbone, arch=..., img_size=..., ...)``.
        adapter: ``MTLoRAConfig``/``LoRAConfig``, a dict with ``type`` and fields, or None.
        trainable: Switches of :class:`~.backbones.swin_trainable.TrainablePolicy`.
        fusion: ``dict(channels=...)``, an int or one per stage (default ``(18, 36, 72, 144)``).
        heads: ``{"default": dict(type=HRNetHead), task: dict(type=MLPHead, ...)}``.
        num_outputs: Output channels per task; missing tasks use ``NUM_OUTPUTS[dataset]``.
        dataset: Key of ``mtlora_vision.tasks.NUM_OUTPUTS`` for default output channels.
        losses: Loss settings for ``mode='loss'`` (see :func:`build_losses`).
        data_preprocessor: mmengine data preprocessor; default ``BaseDataPreprocessor``.
        init_cfg: mmengine initialisation config (keep None: weights load in the backbone).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        backbone: Mapping[str, Any],
        adapter: AdapterConfig | Mapping[str, Any] | None = None,
        trainable: Mapping[str, bool] | None = None,
        fusion: Mapping[str, Any] | None = None,
        heads: Mapping[str, Any] | None = None,
        num_outputs: Mapping[str, int] | None = None,
        dataset: str = "pascal_context",
        losses: Mapping[str, Any] | None = None,
        data_preprocessor: Mapping[str, Any] | nn.Module | None = None,
        init_cfg: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.tasks = check_tasks(tasks, [t.value for t in Task], "MultiTaskModel")
        self.num_outputs = resolve_num_outputs(self.tasks, num_outputs, dataset)
        self.adapter_config = build_adapter_config(adapter)
        self.backbone = build_backbone(backbone, self.tasks, self.adapter_config)
        fusion = dict(fusion or {})
        unknown = sorted(set(fusion) - {"channels"})
        if unknown:
            raise KeyError(f"Unknown fusion options {unknown}; only 'channels' is supported.")
        channels = fusion.get("channels", DEFAULT_FUSION_CHANNELS)
        in_channels = self.backbone.out_channels
        self.fusion = nn.ModuleDict(
            {t: MultiScaleFusion(in_channels, channels) for t in self.tasks}
        )
        head_cfgs = resolve_head_cfgs(self.tasks, heads)
        self.heads = nn.ModuleDict(
            {
                t: build_head(head_cfgs[t], self.fusion[t].out_channels, self.num_outputs[t])
                for t in self.tasks
            }
        )
        self.criterion, self.loss_weighting = build_losses(self.tasks, losses)
        self.trainable_policy = TrainablePolicy.from_mapping(trainable)
        self.apply_trainable_policy()

    def parameter_groups(self) -> dict[str, str]:
        """Parameter name -> policy group (backbone groups, ``"decoder"`` for fusion and heads)."""
        groups = {f"backbone.{n}": g for n, g in self.backbone.parameter_groups().items()}
        decoder_side = (
            ("fusion", self.fusion),
            ("heads", self.heads),
            ("loss_weighting", self.loss_weighting),
        )
        for prefix, module in decoder_side:
            groups.update({f"{prefix}.{n}": "decoder" for n, _ in module.named_parameters()})
        return groups

    def apply_trainable_policy(self) -> None:
        """Set ``requires_grad`` of every parameter from ``self.trainable_policy``."""
        groups = self.parameter_groups()
        for name, param in self.named_parameters():
            param.requires_grad_(self.trainable_policy.is_trainable(groups[name]))

    def forward(
        self,
        inputs: Tensor,
        data_samples: list[dict] | None = None,
        mode: str = "tensor",
    ) -> dict[str, Tensor] | list[dict]:
        """Run the model.

        Args:
            inputs: Images ``(B, 3, H, W)``, ``H, W`` multiples of 32.
            data_samples: Per-sample dicts (docs/design.md); ``'loss'`` needs their ``targets``.
            mode: ``'tensor'`` (raw outputs), ``'loss'`` or ``'predict'``.

        Returns:
            ``'tensor'``: task -> raw output ``(B, K_t, H, W)`` at input resolution (logits,
            unnormalised normals). ``'loss'``: ``loss_<task>`` (weighted) and logged values.
            ``'predict'``: per sample, its dict plus ``"pred": {task: Tensor}`` at the size of
            its targets (or of the input when it has none).
        """
        if mode == "tensor":
            return self.forward_tensor(inputs)
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.predict(inputs, data_samples)
        raise ValueError(f"Unknown mode={mode!r}; use 'tensor', 'loss' or 'predict'.")

    def loss(self, inputs: Tensor, data_samples: Sequence[Mapping] | None) -> dict[str, Tensor]:
        """Weighted per-task losses of a batch whose samples share one target size."""
        if not data_samples:
            raise ValueError("mode='loss' needs data_samples with targets.")
        outputs = self.forward_tensor(inputs)
        targets = stack_targets(data_samples, self.tasks, device=inputs.device)
        for task, target in targets.items():
            size = tuple(target.shape[-2:])
            if tuple(outputs[task].shape[-2:]) != size:
                outputs[task] = F.interpolate(
                    outputs[task], size=size, mode="bilinear", align_corners=False
                )
        return self.loss_weighting(self.criterion(outputs, targets))

    def predict(self, inputs: Tensor, data_samples: Sequence[Mapping] | None = None) -> list[dict]:
        """Decoded predictions per sample, resized to each sample's target size."""
        outputs = self.forward_tensor(inputs)
        samples = [dict(s) for s in data_samples] if data_samples else [{} for _ in inputs]
        sizes = [_prediction_size(sample, inputs.shape[-2:]) for sample in samples]
        for sample, pred in zip(samples, postprocess_outputs(outputs, sizes), strict=True):
            sample["pred"] = pred
        return samples

    def forward_tensor(self, inputs: Tensor) -> dict[str, Tensor]:
        """Raw outputs per task at input resolution, ``(B, K_t, H, W)``."""
        size = inputs.shape[-2:]
        outputs = {}
        with lean_activations(self.backbone.recompute_elementwise):  # heads too
            # unbind, not f[index]: one backward pass stacks the task gradients, where indexing
            # would zero-fill a whole (T, ...) gradient per task and add the T of them up.
            feats = [f.unbind(0) for f in self.backbone(inputs)]  # per stage: T x (B, C, H, W)
            for index, task in enumerate(self.tasks):
                logits = self.heads[task](self.fusion[task]([f[index] for f in feats]))
                outputs[task] = F.interpolate(
                    logits, size=size, mode="bilinear", align_corners=False
                )
        return outputs


def _prediction_size(sample: Mapping, input_size: Sequence[int]) -> tuple[int, int]:
    """Size predictions should have: that of the sample's targets, else the input's."""
    targets = sample.get("targets") or {}
    for target in targets.values():
        return int(target.shape[-2]), int(target.shape[-1])
    return int(input_size[0]), int(input_size[1])
