"""The prompt layers a fast-slow hook drives, and the claim that only one hook drives them."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt
from mtlora_vision.engine.unwrap import unwrap_model


def prompt_layers(model: nn.Module) -> list[TaskAdaptiveLowRankPrompt]:
    """Every prompt adapter of ``model`` (unwrapped from DDP)."""
    return [m for m in unwrap_model(model).modules() if isinstance(m, TaskAdaptiveLowRankPrompt)]


def set_fast_slow_driver(model: nn.Module, driver: str) -> int:
    """Let the prompts of ``model`` train without their fast-slow hook, ``driver`` taking charge.

    For tools that time training steps (``tools/benchmark.py``): Lookahead and the two phases change
    what happens between optimizer steps, not the cost of one. Returns the number of prompt layers.
    """
    layers = prompt_layers(model)
    for layer in layers:
        layer.fast_slow_driver = driver
    return len(layers)


def claim_prompts(model: nn.Module, mode: str, hook: str, required: bool) -> int:
    """Mark the prompt layers as driven by ``hook``; check they were built for ``mode``.

    Raises:
        ValueError: If a prompt layer was built with another ``fast_slow``, or ``required`` and
            the model has no prompt layer.
    """
    layers = prompt_layers(model)
    if required and not layers:
        raise ValueError(
            f"{hook} found no TaskAdaptiveLowRankPrompt in the model; remove it from "
            "custom_hooks or use a ta_lora_prompt adapter (TALoRAPromptConfig)."
        )
    other = sorted({layer.fast_slow for layer in layers} - {mode})
    if other:
        raise ValueError(
            f"{hook} drives fast_slow={mode!r}, but the model's prompts were built with "
            f"fast_slow={other}; set model.adapter.fast_slow={mode!r} or remove the hook."
        )
    for layer in layers:
        layer.fast_slow_driver = hook
    return len(layers)


def count_params(params: Iterable[nn.Parameter]) -> tuple[int, int]:
    """Number of tensors and of scalars in ``params``, for log messages."""
    params = list(params)
    return len(params), sum(p.numel() for p in params)
