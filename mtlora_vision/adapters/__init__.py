"""Low-rank and prompt adapters that wrap frozen layers; they know nothing of Swin or heads."""

from mtlora_vision.adapters.config import LoRAConfig, MTLoRAConfig, build_adapter_config
from mtlora_vision.adapters.inject import inject_adapters, match_targets
from mtlora_vision.adapters.merge import (
    is_merged,
    merge_adapters,
    merge_for_inference,
    unmerge_adapters,
)
from mtlora_vision.adapters.mtl_lora import MTLLoRALinear
from mtlora_vision.adapters.mtl_lora_merge import merge_task, task_merged_state_dict, unmerge_task
from mtlora_vision.adapters.mtlora import MTLoRALinear, MTLoRAOutput
from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt
from mtlora_vision.adapters.state_dict import adapter_state_dict, load_adapter_state_dict
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig, TALoRAPromptConfig

__all__ = [
    "LoRAConfig",
    "MTLLoRAConfig",
    "MTLLoRALinear",
    "MTLoRAConfig",
    "MTLoRALinear",
    "MTLoRAOutput",
    "TALoRAPromptConfig",
    "TaskAdaptiveLowRankPrompt",
    "adapter_state_dict",
    "build_adapter_config",
    "inject_adapters",
    "is_merged",
    "load_adapter_state_dict",
    "match_targets",
    "merge_adapters",
    "merge_for_inference",
    "merge_task",
    "task_merged_state_dict",
    "unmerge_adapters",
    "unmerge_task",
]
