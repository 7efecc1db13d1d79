"""Dropout that draws only the dropped positions on the CPU: one random number per drop.

``nn.Dropout`` draws one random number per element. On CPUs other than Intel's, PyTorch's
``bernoulli_`` has no vectorised path (its MKL path is taken on Intel CPUs only), and LoRA dropout
over every adapter input (``p = 0.05``, about 80 M elements per training step of Swin-T MTLoRA at
448x448) took 290 ms of a 4.1 s fp32 step and 196 ms of a 1.5 s bf16 step on this project's AMD
CPU (``tools/profile_floor.py``). The positions where an i.i.d. Bernoulli(``p``) sequence is 1 are
the partial sums of i.i.d. geometric gaps (support 1, 2, ...), so drawing the gaps gives the same
distribution of masks with about ``p * n`` random numbers instead of ``n``. The output is
``x * m / (1 - p)`` with ``m`` the keep mask, as ``nn.Dropout``; only the random stream differs.
On other devices (CUDA's dropout is a fused kernel), under ``torch.compile`` (inductor generates
its own vectorised random numbers) and in eval mode it is ``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bernoulli_positions(n: int, p: float, device: torch.device | None = None) -> Tensor:
    """Indices in ``[0, n)`` where an i.i.d. Bernoulli(``p``) sequence of length ``n`` is 1.

    Draws geometric gaps from the default CPU generator (``torch.manual_seed`` and saved random
    states govern it, as for ``nn.Dropout``).

    Returns:
        Sorted int64 indices ``(k,)``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p}: a probability strictly between 0 and 1 is needed.")
    mean = n * p
    chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)  # enough almost always
    parts, end = [], 0.0
    while end < n:
        gaps = torch.empty(chunk, dtype=torch.float64).geometric_(p)
        positions = gaps.cumsum_(0).add_(end)  # 1-based positions of the successes
        parts.append(positions)
        end = float(positions[-1])
    positions = torch.cat(parts)
    return (positions[positions <= n] - 1).long().to(device)


class GapDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training masks come from :func:`bernoulli_positions`."""

    def forward(self, x: Tensor) -> Tensor:
        """``x`` with each element zeroed with probability ``p``, the rest scaled by ``1/(1-p)``."""
        plain = not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu"
        if plain or torch.compiler.is_compiling():  # inductor draws its own masks, vectorised
            return F.dropout(x, self.p, self.training, self.inplace)
        scale = torch.full(x.shape, 1.0 / (1.0 - self.p), dtype=x.dtype)  # contiguous
        scale.view(-1).index_fill_(0, bernoulli_positions(x.numel(), self.p), 0.0)
        return x.mul_(scale) if self.inplace else x * scale
