"""What one benchmark step runs: a training step, inference, their FLOPs and a compiled twin.

A training step is ``zero_grad`` + forward + backward of a surrogate loss (the mean square of
every output). FLOPs (matmuls and convolutions, via ``torch.utils.flop_counter``; window attention
on the CPU flash kernel is not counted, and it is identical across variants) give the floor of
each ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mtlora_vision.adapters.merge import merge_for_inference
from mtlora_vision.engine.precision import Precision, autocast


def surrogate_loss(outputs: dict[str, Tensor]) -> Tensor:
    """Mean square of every task output, summed: a loss of realistic cost."""
    return sum(o.float().square().mean() for o in outputs.values())


def train_step(model: nn.Module, images: Tensor) -> None:
    """zero_grad + forward + backward."""
    model.zero_grad(set_to_none=True)
    surrogate_loss(model(images, mode="tensor")).backward()


def infer_step(model: nn.Module, images: Tensor) -> None:
    """Forward without autograd."""
    with torch.inference_mode():
        model(images, mode="tensor")


def prepare(model: nn.Module, phase: str) -> Callable[[Tensor], None]:
    """Put ``model`` in the phase's mode and return the step function."""
    if phase == "train":
        model.train()
        return lambda images: train_step(model, images)
    model.eval()
    if phase == "infer_merged":
        merge_for_inference(model)
    return lambda images: infer_step(model, images)


def in_precision(step: Callable[[Tensor], None], precision: Precision) -> Callable[[Tensor], None]:
    """``step`` run under :func:`~mtlora_vision.engine.precision.autocast` of ``precision``."""

    def run(images: Tensor) -> None:
        with autocast(precision):
            step(images)

    return run


def compiled_step(
    model: nn.Module, phase: str, precision: Precision, images: Tensor
) -> tuple[Callable[[Tensor], None], dict[str, float]]:
    """The step of ``torch.compile(model)`` (a prepared ``model``), compiled on ``images`` now.

    Inference phases compile with inductor's ``freezing`` (weights are constants of the graph:
    the compiled twin must not be used after the weights change).

    Returns:
        The step and ``compile_s`` (seconds of the first, compiling call) and, for inference
        phases, ``max_rel_diff``: the largest ``max|compiled - eager| / max|eager|`` over the task
        outputs (training outputs differ by their dropout draws, so they are not compared).
    """
    # Inference: inductor's freezing folds the weights in as constants and prepacks them for
    # oneDNN; without it the compiled model was slower than eager on this CPU (docs/speed.md).
    # torch.compile(options={"freezing": True}) did not take effect; the config patch does.
    compiled = torch.compile(model, dynamic=False)  # one graph per input shape
    run = train_step if phase == "train" else infer_step
    step = in_precision(lambda x: run(compiled, x), precision)
    start = time.perf_counter()
    with torch._inductor.config.patch(freezing=phase != "train"):  # compiled at the first call
        step(images)
    report = {"compile_s": time.perf_counter() - start}
    if phase == "train":
        return step, report
    with torch.inference_mode(), autocast(precision):
        eager, fast = model(images, mode="tensor"), compiled(images, mode="tensor")
    diff = max(
        float((fast[k].float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-12))
        for k, v in eager.items()
    )
    return step, {**report, "max_rel_diff": diff}


def inplace_addmm_flops(
    self_shape: torch.Size, a_shape: torch.Size, b_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """FLOPs of ``addmm_`` (same as ``addmm``: a ``(m, k) @ (k, n)`` product)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def count_flops(model: nn.Module, images: Tensor, phase: str) -> int:
    """FLOPs of one step (matmuls and convolutions)."""
    step = prepare(model, phase)
    # In-place addmm_ (used by the adapter layers) is not in torch's formula table.
    extra = {torch.ops.aten.addmm_: inplace_addmm_flops}
    with FlopCounterMode(display=False, custom_mapping=extra) as counter:
        step(images)
    return int(counter.get_total_flops())
