"""Dropout that draws only the dropped positions on the CPU: one random number per drop.

``nn.Dropout`` draws one random number per element. On CPUs other than Intel's, PyTorch's
``bernoulli_`` has no vectorised path (its MKL path is taken on Intel CPUs only), and LoRA dropout
over every adapter input (``p = 0.05``, about 80 M elements per training step of Swin-T MTLoRA at
448x448) took 290 ms of a 4.1 s fp32 step and 196 ms of a 1.5 s bf16 step on this project's AMD
CPU (``tools/profile_floor.py``). The positions where an i.i.d. Bernoulli(``p``) sequence is 1 are
the partial sums of i.i.d. geometric gaps (support 1, 2, ...), so drawing the gaps gives the same
distribution of masks with about ``p * n`` random numbers instead of ``n``. The output is
``x * m / (1 - p)`` with ``m`` the keep mask, as ``nn.Dropout`` (the same scale, rounded to the
input's dtype); only the random stream differs. The backward pass keeps the ``p * n`` dropped
indices instead of ``nn.Dropout``'s mask of ``n`` elements in the input's dtype.
On other devices (CUDA's dropout is a fused kernel), under ``torch.compile`` (inductor generates
its own vectorised random numbers) and in eval mode it is ``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def bernoulli_positions(n: int, p: float, device: torch.device | None = None) -> Tensor:
    """Indices in ``[0, n)`` where an i.i.d. Bernoulli(``p``) sequence of length ``n`` is 1.

    Draws geometric gaps from the default CPU generator (``torch.manual_seed`` and saved random
    states govern it, as for ``nn.Dropout``). A gap is ``ceil(log(u) / log(1 - p))`` of a uniform
    ``u`` in float64 (inversion of the geometric distribution's CDF): the same numbers, from the
    same uniforms, as ``Tensor.geometric_``, which evaluates that formula one element at a time
    (3x slower here); the result and the generator state afterwards equal a ``geometric_`` draw
    (tested).

    Returns:
        Sorted int64 indices ``(k,)``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p}: a probability strictly between 0 and 1 is needed.")
    mean = n * p
    chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)  # enough almost always
    log_keep = math.log1p(-p)
    parts, last = [torch.empty(0, dtype=torch.int64)], -1  # last: index of the last success
    while last < n - 1:
        uniforms = torch.rand(chunk, dtype=torch.float64)
        gaps = uniforms.log_().div_(log_keep).ceil_().long()  # geometric, support 1, 2, ...
        positions = gaps.cumsum_(0).add_(last)
        parts.append(positions)
        last = int(positions[-1])
    positions = parts[1] if len(parts) == 2 else torch.cat(parts)
    inside = int(torch.searchsorted(positions, n))  # positions are sorted
    return positions[:inside].to(device)


class _ScaleAndDrop(torch.autograd.Function):
    """``x * scale`` with the elements at ``dropped`` (flat indices) zeroed; saves only those."""

    @staticmethod
    def forward(ctx, x: Tensor, dropped: Tensor, scale: float) -> Tensor:
        out = torch.mul(x, scale, out=torch.empty(x.shape, dtype=x.dtype))  # contiguous
        out.view(-1).index_fill_(0, dropped, 0.0)
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (dropped,) = ctx.saved_tensors
        grad_x = torch.mul(grad, ctx.scale, out=torch.empty(grad.shape, dtype=grad.dtype))
        grad_x.view(-1).index_fill_(0, dropped, 0.0)
        return grad_x, None, None


class GapDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training masks come from :func:`bernoulli_positions`.

    Only the dropped positions are kept for the backward pass (``p * n`` indices instead of a mask
    of ``n`` elements in the input's dtype).
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x`` with each element zeroed with probability ``p``, the rest scaled by ``1/(1-p)``."""
        if not self.uses_gaps(x):
            return F.dropout(x, self.p, self.training, self.inplace)
        dropped, scale = self.draw(x)
        return self.apply_drops(x, dropped, scale)

    def uses_gaps(self, x: Tensor) -> bool:
        """Whether :meth:`forward` draws gaps for ``x`` (else it is ``F.dropout``)."""
        plain = not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu"
        return not (plain or self.inplace or torch.compiler.is_compiling())  # inductor: its own

    def draw(self, x: Tensor) -> tuple[Tensor, float]:
        """The dropped flat indices of ``x`` and ``nn.Dropout``'s scale in ``x``'s dtype."""
        scale = float(torch.ones((), dtype=x.dtype).div_(1.0 - self.p))
        return bernoulli_positions(x.numel(), self.p), scale

    @staticmethod
    def apply_drops(x: Tensor, dropped: Tensor, scale: float) -> Tensor:
        """``x * scale`` with the elements at ``dropped`` zeroed (what :meth:`draw` drew)."""
        return _ScaleAndDrop.apply(x, dropped, scale)
