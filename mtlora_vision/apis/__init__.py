"""High-level entry points: build a model from a config, predict on images."""

from mtlora_vision.apis.inference import init_model
from mtlora_vision.apis.predict import collect_images, predict_images

__all__ = ["collect_images", "init_model", "predict_images"]
