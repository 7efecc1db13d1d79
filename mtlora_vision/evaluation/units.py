"""Units of the metric keys, for the tables the tools print.

Percentages for IoU, F-measures, AP, the shares of normals within an angle and Delta-m; degrees for
the normals' angle errors; metres for the depth RMSE; none for the edge BCE and the log-depth RMSE
(``mtlora_vision/evaluation/metrics.py`` computes them so).
"""

from __future__ import annotations

PERCENT = "%"
DEGREES = "deg"
METRES = "m"

#: The unit of every metric key the package computes (per-class IoU keys: see metric_unit).
METRIC_UNITS: dict[str, str] = {
    "semseg/mIoU": PERCENT,
    "human_parts/mIoU": PERCENT,
    "sal/mIoU": PERCENT,
    "sal/maxF": PERCENT,
    "sal/maxFbeta": PERCENT,
    "normals/mean": DEGREES,
    "normals/median": DEGREES,
    "normals/rmse": DEGREES,
    "normals/11.25": PERCENT,
    "normals/22.5": PERCENT,
    "normals/30": PERCENT,
    "edge/bce": "",
    "edge/odsF": PERCENT,
    "edge/oisF": PERCENT,
    "edge/AP": PERCENT,
    "depth/rmse": METRES,
    "depth/log_rmse": "",
    "multitask/delta_m": PERCENT,
}


def metric_unit(key: str) -> str:
    """The unit of metric ``key`` (``""`` when it has none or the key is not a known metric).

    Per-class IoU keys (``<task>/IoU/<class>``) are percentages.
    """
    if key in METRIC_UNITS:
        return METRIC_UNITS[key]
    return PERCENT if key.split("/")[1:2] == ["IoU"] else ""
