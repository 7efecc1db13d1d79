"""Surface-normal angular errors of the MTLoRA protocol (Agiza et al., CVPR 2024).

The angle between the L2-normalised prediction and ground truth is computed per pixel as
``2 * atan2(|p - g|, |p + g|)`` (equal to ``acos(<p, g>)`` but accurate near 0 and 180 degrees)
and pooled over every valid pixel of the dataset (pixel-wise, not per image). A pixel is invalid
when any ground-truth channel equals ``IGNORE_INDEX``.

Reported: mean, median, the **true** root-mean-square error and the percentages of pixels with an
error below 11.25, 22.5 and 30 degrees (strict ``<``). The official meter's "rmse" is in fact the
mean, so the paper's "Normals (rmse)" column corresponds to ``mean`` here.

Sufficient statistics per image (:func:`normals_stats`) are exact sums and counts plus a histogram
of the errors; the median is read from the summed histogram (values spread evenly inside
a bin), so it is exact to within one bin width (0.05 degrees by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_vision.tasks import IGNORE_INDEX

#: Angle thresholds (degrees) of the "% within" metrics.
WITHIN_DEGREES: tuple[float, ...] = (11.25, 22.5, 30.0)


def angular_error(pred: Tensor, target: Tensor, ignore_index: float = IGNORE_INDEX) -> Tensor:
    """Angular error in degrees at the valid pixels of one image.

    Args:
        pred: Predicted normals ``(3, H, W)``; normalised here (they need not be unit vectors).
        target: Ground-truth normals ``(3, H, W)``; ``ignore_index`` on a channel marks an
            invalid pixel.
        ignore_index: Value of invalid ground truth.

    Returns:
        ``float64 (M,)`` errors in ``[0, 180]`` for the ``M`` valid pixels, on the CPU.

    Raises:
        ValueError: If the shapes differ or are not ``(3, H, W)``.
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[0] != 3:
        raise ValueError(
            f"Normals must be (3, H, W) with equal shapes; got pred {tuple(pred.shape)} and "
            f"target {tuple(target.shape)}."
        )
    pred = pred.detach().to("cpu", torch.float64)
    target = target.detach().to("cpu", torch.float64)
    valid = (target != ignore_index).all(dim=0)  # (H, W)
    pred = F.normalize(pred[:, valid], dim=0)  # (3, M)
    target = F.normalize(target[:, valid], dim=0)
    angle = 2.0 * torch.atan2((pred - target).norm(dim=0), (pred + target).norm(dim=0))
    return torch.rad2deg(angle)


def normals_stats(errors: Tensor, bin_width: float = 0.05) -> dict[str, Tensor]:
    """Summarise one image's angular errors into additive statistics.

    Args:
        errors: ``(M,)`` errors in degrees (from :func:`angular_error`).
        bin_width: Histogram bin width in degrees; ``180 / bin_width`` bins.

    Returns:
        ``"moments"``: ``float64 (3,)`` count, sum and sum of squares;
        ``"within"``: ``int64 (3,)`` counts below each of :data:`WITHIN_DEGREES`;
        ``"hist"``: ``int32 (180 / bin_width,)`` histogram over ``[0, 180]``.
    """
    num_bins = _num_bins(bin_width)
    errors = errors.to(torch.float64)
    count = torch.tensor(float(errors.numel()), dtype=torch.float64)
    moments = torch.stack([count, errors.sum(), errors.square().sum()])
    within = torch.stack([(errors < limit).sum() for limit in WITHIN_DEGREES]).to(torch.int64)
    index = (errors / bin_width).floor().to(torch.int64).clamp_(0, num_bins - 1)
    hist = torch.bincount(index, minlength=num_bins).to(torch.int32)
    return {"moments": moments, "within": within, "hist": hist}


def normals_metrics(
    stats: Sequence[Mapping[str, Tensor]], bin_width: float = 0.05
) -> dict[str, float]:
    """Reduce per-image statistics to the dataset's normals metrics.

    Args:
        stats: Per-image outputs of :func:`normals_stats` (same ``bin_width``).
        bin_width: The bin width used to build the histograms.

    Returns:
        ``mean``, ``median``, ``rmse`` in degrees and ``11.25``, ``22.5``, ``30`` as fractions of
        the valid pixels; all NaN when there is no valid pixel.

    Raises:
        ValueError: If ``stats`` is empty.
    """
    if not stats:
        raise ValueError("No normals statistics to reduce.")
    moments = torch.stack([s["moments"] for s in stats]).sum(dim=0)
    within = torch.stack([s["within"] for s in stats]).sum(dim=0).to(torch.float64)
    hist = torch.stack([s["hist"].to(torch.int64) for s in stats]).sum(dim=0)
    count, total, total_sq = (float(v) for v in moments)
    keys = ("mean", "median", "rmse", *(_within_key(d) for d in WITHIN_DEGREES))
    if count == 0:
        return dict.fromkeys(keys, math.nan)
    values = [total / count, histogram_median(hist, bin_width), math.sqrt(total_sq / count)]
    values += [float(v) / count for v in within]
    return dict(zip(keys, values, strict=True))


def histogram_median(hist: Tensor, bin_width: float) -> float:
    """Median of values binned in ``[i * bin_width, (i + 1) * bin_width)``.

    Values inside a bin are taken as evenly spread over it; as ``numpy.median`` does, an even count
    averages the two middle values. The result is within one bin width of the exact median.

    Args:
        hist: ``(B,)`` non-negative counts with a positive total.
        bin_width: Width of each bin.

    Returns:
        The median.
    """
    hist = hist.to(torch.float64)
    count = int(hist.sum())
    cum = hist.cumsum(dim=0)
    ranks = [(count + 1) // 2, count // 2 + 1]  # equal when the count is odd
    values = []
    for rank in ranks:
        index = int(torch.searchsorted(cum, torch.tensor([float(rank)], dtype=torch.float64))[0])
        before = float(cum[index - 1]) if index > 0 else 0.0
        values.append((index + (rank - 0.5 - before) / float(hist[index])) * bin_width)
    return sum(values) / 2.0


def _num_bins(bin_width: float) -> int:
    if not 0.0 < bin_width <= 180.0:
        raise ValueError(f"bin_width={bin_width} must be in (0, 180] degrees.")
    return math.ceil(180.0 / bin_width - 1e-9)


def _within_key(degrees: float) -> str:
    return f"{degrees:g}"
