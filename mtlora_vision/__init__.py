"""mtlora_vision: parameter-efficient multi-task dense prediction (MTLoRA and related adapters)."""

from mtlora_vision.tasks import IGNORE_INDEX, Task

__all__ = ["IGNORE_INDEX", "Task"]
__version__ = "0.1.0"
