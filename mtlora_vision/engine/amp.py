"""Mixed precision on the CPU: bf16 autocast through an mmengine optimizer wrapper.

mmengine's ``AmpOptimWrapper`` refuses to start without an accelerator, so CPU runs that ask for
mixed precision use :class:`CPUAutocastOptimWrapper` instead (bf16 needs no loss scaling).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from torch import nn


class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward context runs under ``torch.autocast('cpu', bfloat16)``."""

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """Enter the parent's context (gradient accumulation) and CPU bf16 autocast."""
        with super().optim_context(model), torch.autocast("cpu", dtype=torch.bfloat16):
            yield
