"""Multi-task metrics: pure functions in ``functional`` and the mmengine metric."""

from mtlora_vision.evaluation.metrics import MultiTaskMetric

__all__ = ["MultiTaskMetric"]
