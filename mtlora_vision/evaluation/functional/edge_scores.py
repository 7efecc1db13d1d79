"""Edge scores from per-image, per-threshold match counts: ODS F, OIS F and AP.

Steps and sources: ``docs/edge_evaluation.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlora_vision.evaluation.functional.boundary import (
    average_precision,
    bsds_precision_recall,
    ods_f,
    ois_f,
)
from mtlora_vision.evaluation.functional.seism import seism_ods, seism_precision_recall

_PERCENT = 100.0


def edge_scores(per_image: np.ndarray, protocol: str) -> dict[str, float]:
    """``edge/odsF``, ``edge/oisF`` and ``edge/AP`` (percent) from per-image counts.

    Args:
        per_image: ``(N, T, 4)`` counts of each image at each threshold.
        protocol: ``"seism"`` (SEISM's conventions, ODS without interpolation) or ``"bsds"``
            (BSDS's, ODS interpolated between thresholds).

    Returns:
        The three scores in percent.
    """
    total = per_image.sum(axis=0)
    if protocol == "seism":
        precision, recall = seism_precision_recall(total)
        ods = seism_ods(total)
        ois = ois_f(per_image, seism_precision_recall)
    else:
        precision, recall = bsds_precision_recall(total)
        ods = ods_f(torch.from_numpy(total))
        ois = ois_f(per_image, bsds_precision_recall)
    return {
        "edge/odsF": ods * _PERCENT,
        "edge/oisF": ois * _PERCENT,
        "edge/AP": average_precision(precision, recall) * _PERCENT,
    }
