"""High-level entry points: build a model from a config, predict on images."""

from mtlora_vision.apis.inference import init_model
from mtlora_vision.apis.predict import predict_images

__all__ = ["init_model", "predict_images"]
