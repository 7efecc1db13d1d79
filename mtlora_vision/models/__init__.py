"""Backbones, fusion, heads, losses and the multi-task model."""

from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.heads.mlp import MLPHead
from mtlora_vision.models.multitask import MultiTaskModel
from mtlora_vision.models.necks.fusion import MultiScaleFusion

__all__ = ["HRNetHead", "MLPHead", "MultiScaleFusion", "MultiTaskModel", "SwinBackbone"]
